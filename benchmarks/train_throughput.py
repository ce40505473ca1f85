"""Training images/s: kdpipe's pipeline against the plain torchvision loop, side by side in one run.

kdpipe: uint8 images in memory, crop/flip/normalize on whole batches as tensor ops on the training
device, channels_last, optionally torch.compile, and bf16 autocast where the device computes bf16
natively (CUDA; CPUs with AMX or AVX512-BF16), as `kdpipe train` does by default.
plain: torchvision ImageFolder + DataLoader(batch 128, 2 workers, shuffle) + PIL RandomCrop(32, 4),
RandomHorizontalFlip, ToTensor, Normalize; fp32 NCHW; the same model and optimizer.

    python benchmarks/train_throughput.py --data ../shared/datasets/cifar10-images.tar.gz

Warm-up steps are excluded; CUDA timings synchronize. On a GPU it also times a full ResNet20 epoch.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torchvision import transforms

from kdpipe.data import CIFAR10_MEAN, CIFAR10_STD, BatchLoader, default_data_path, load_dataset
from kdpipe.models import create
from kdpipe.runinfo import environment
from kdpipe.train.precision import precision_name, uses_bf16
from kdpipe.train.trainer import resolve_device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(
    step, batches: Iterator, steps: int, warmup: int, device: torch.device, batch_size: int
) -> float:
    """Run `warmup` untimed steps, then `steps` timed ones (data loading included)."""
    for _ in range(warmup):
        step(*next(batches))
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def make_step(model: torch.nn.Module, amp: bool, device: torch.device):
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def forever(loader) -> Iterator:
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def kdpipe_pipeline(name, data, args, device) -> tuple:
    """kdpipe's training step and in-memory loader for `name`, as `kdpipe train` sets them up."""
    model = create(name).to(device, memory_format=torch.channels_last).train()
    compiled = torch.compile(model) if args.compile else model
    loader = BatchLoader(
        data.train_images,
        data.train_labels,
        batch_size=args.batch_size,
        train=True,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        device=device,
        channels_last=True,
    )
    return make_step(compiled, amp=uses_bf16(args.amp, device), device=device), loader


def kdpipe_rate(name, data, args, device) -> float:
    step, loader = kdpipe_pipeline(name, data, args, device)
    warmup = args.warmup + (10 if args.compile else 0)
    return images_per_second(step, forever(loader), args.steps, warmup, device, args.batch_size)


def plain_rate(name, folder: Path, args, device) -> float:
    model = create(name).to(device).train()
    tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )
    dataset = torchvision.datasets.ImageFolder(folder / "train", transform=tf)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        persistent_workers=True,
        pin_memory=device.type == "cuda",
    )
    step = make_step(model, amp=False, device=device)

    def to_device(batches):
        for x, y in batches:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return images_per_second(
        step, to_device(forever(loader)), args.steps, args.warmup, device, args.batch_size
    )


def extract(tarball: Path, into: Path) -> Path:
    with tarfile.open(tarball) as tar:
        tar.extractall(into, filter="data")
    return next(p.parent for p in into.rglob("train") if p.is_dir())


def full_epoch_seconds(data, args, device) -> float:
    """One full ResNet20 epoch over the whole train set (GPU target: <= 4 s), after a warm-up."""
    step, loader = kdpipe_pipeline("resnet20", data, args, device)
    for epoch in range(2):  # epoch 0 warms up (compilation, cuDNN autotune)
        loader.set_epoch(epoch)
        sync(device)
        start = time.perf_counter()
        for x, y in loader:
            step(x, y)
        sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(default_data_path() or ""))
    parser.add_argument("--models", default="resnet20,resnet110")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="kdpipe side in bf16 autocast where the device has native bf16 "
                        "(kdpipe train's default); the plain loop is always fp32")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if not args.data:
        raise SystemExit("pass --data PATH to the CIFAR-10 tarball or ImageFolder tree")
    device = resolve_device(args.device)
    data = load_dataset(args.data)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.data)
        if folder.is_file():
            folder = extract(folder, Path(tmp))
        for name in args.models.split(","):
            plain = plain_rate(name, folder, args, device)
            fast = kdpipe_rate(name, data, args, device)
            rows.append(
                {"model": name, "plain_img_s": plain, "kdpipe_img_s": fast, "ratio": fast / plain}
            )
            print(
                f"{name:10s} plain {plain:8.0f} img/s   kdpipe {fast:8.0f} img/s   "
                f"x{fast / plain:.2f}",
                flush=True,
            )
    result = {"rows": rows, "args": vars(args), "environment": environment(device),
              "kdpipe_precision": precision_name(args.amp, device)}
    print(f"kdpipe precision: {result['kdpipe_precision']}")
    if device.type == "cuda":
        result["resnet20_epoch_s"] = full_epoch_seconds(data, args, device)
        print(f"resnet20 full epoch: {result['resnet20_epoch_s']:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
