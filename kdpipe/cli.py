"""The `kdpipe` command: one thin typed function per stage over the library API."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from kdpipe.cliutil import config_command, friendly_errors
from kdpipe.progress import console
from kdpipe.train.config import TrainConfig

app = typer.Typer(
    name="kdpipe",
    help="Distill a big CIFAR network into a small one, export it for devices, benchmark it.\n\n"
    "Stages: train / distill -> export -> bench (and deploy). Run `kdpipe COMMAND --help`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@config_command(app, TrainConfig)
def train(
    config: TrainConfig,
    resume: bool = typer.Option(
        False, "--resume", help="continue the run in --out where it stopped"
    ),
) -> None:
    """Train a model from scratch (the baseline every distilled student is compared with).

    Example: kdpipe train --model resnet20 --epochs 30 --out runs/resnet20
    """
    from kdpipe.train import train_baseline

    summary = train_baseline(config, resume=resume)
    if summary:  # only the main process of a torchrun job reports
        console.print(f"top-1 {summary['top1']:.2f}%  ->  {Path(config.out) / 'model.pt'}")


@app.command("eval")
@friendly_errors
def eval_(
    checkpoint: Path = typer.Argument(..., help="kdpipe checkpoint or pytorch_resnet_cifar10 file"),
    data: Optional[str] = typer.Option(None, help="data set (as for `kdpipe train`)"),  # noqa: UP045
    limit_test: Optional[int] = typer.Option(None, help="stratified subset of N test images"),  # noqa: UP045
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    download: bool = typer.Option(False, help="let torchvision download CIFAR-10"),
) -> None:
    """Print the top-1 accuracy of a checkpoint on the test set."""
    from kdpipe.train.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(
        checkpoint, data=data, limit_test=limit_test, device=device, download=download
    )
    console.print(f"top-1 {result['top1']:.2f}% on {result['n']} test images ({checkpoint})")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
