"""The `kdpipe` command: one thin typed function per stage over the library API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer

from kdpipe import quiet
from kdpipe.bench.config import BenchConfig
from kdpipe.cliutil import Command, Group, config_command, fail, friendly_errors, import_option
from kdpipe.config import comma_list, import_modules, option, to_dict
from kdpipe.export.config import ExportConfig
from kdpipe.pipeline import PipelineConfig, load_pipeline_config
from kdpipe.progress import console, plural
from kdpipe.report.records import run_line
from kdpipe.sweep import SweepOptions, sweep_configs
from kdpipe.train.config import DistillConfig, EvalConfig, TrainConfig

app = typer.Typer(
    name="kdpipe",
    help="Distill a big CIFAR network into a small one, export it for devices, benchmark it.\n\n"
    "Stages: train / distill -> export -> bench (and deploy). Run `kdpipe COMMAND --help`.",
    cls=Group,
    rich_markup_mode="rich",  # help texts are rich markup, escaped where they hold brackets
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main_options(
    verbose: bool = typer.Option(
        False, "--verbose", "-v",
        help="show what the libraries print (coremltools, ExecuTorch, tqdm bars, their logs); "
             "without it kdpipe shows it only when a command fails"),
) -> None:
    """Options of every command (before the command's name: kdpipe -v export ...)."""
    quiet.set_verbose(verbose)


@config_command(app, TrainConfig, user_modules=True)
def train(
    config: TrainConfig,
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out where it "
                                "stopped"),
) -> None:
    """Train a model from scratch (the baseline every distilled student is compared with).

    Example: kdpipe train --model resnet20 --epochs 30 --out runs/resnet20
    """
    from kdpipe.train import train_baseline

    summary = train_baseline(config, resume=resume)
    if summary:  # only the main process of a torchrun job reports
        console.print(run_line(Path(config.out).name, summary)
                      + f"  ->  {Path(config.out) / 'model.pt'}")


@config_command(app, DistillConfig, user_modules=True)
def distill(
    config: DistillConfig,
    resume: bool = typer.Option(
        False, "--resume", help="continue the run in --out (and its stage folders) where it "
        "stopped"),
) -> None:
    """Distill a teacher checkpoint into a student trained from random initialization.

    KD loss = (1 - alpha) * CE(labels, student) + alpha * T^2 * KL(teacher_T || student_T).
    Methods: kd, fitnets (hint stage, then KD), rkd, dkd, dist, lskd, at, scratch, and sums
    such as dkd+rkd (`kdpipe list` shows each with its paper's defaults).

    Example: kdpipe distill --teacher-checkpoint ../shared/weights/resnet110-cifar10jpeg.th
    --student resnet20 --method kd --temperature 4 --alpha 0.9 --out runs/kd

    For INT8 phones, continue a trained student for a few fake-quantized epochs
    (quantization-aware distillation), then export it with --quantize int8:

        kdpipe distill ... --qat --init-checkpoint runs/kd/model.pt --epochs 1 \\
            --lr 0.0001 --warmup-epochs 0 --out runs/kd-qat
    """
    from kdpipe.train.distill import distill as run_distill

    summary = run_distill(config, resume=resume)
    console.print(run_line(Path(config.out).name, summary)
                  + f"  ->  {Path(config.out) / 'model.pt'}")


@config_command(app, SweepOptions)
def sweep(
    config: SweepOptions,
    sweep_file: str = typer.Argument(..., help="sweep file (TOML/YAML) with base and grid "
                                     "tables, or a shipped one: " + ", ".join(sweep_configs())),
) -> None:
    # A raw docstring: `\[` keeps rich markup from taking [base] for a style tag in --help.
    r"""Run a grid of distill cells (resumable: finished cells are kept), then write the tables.

    The sweep file: \[base] holds options of `kdpipe distill`; each \[\[grid]] table
    is the product of its lists; `points` varies options together; top-level
    `seeds` runs every cell once per seed, a table's own `seeds` only its cells.

        out = "runs/my-sweep"
        seeds = [0]
        \[base]
        teacher_checkpoint = "runs/teacher/model.pt"
        student = "resnet20"
        epochs = 15
        \[\[grid]]
        method = ["scratch", "rkd", "fitnets"]
        \[\[grid]]
        method = ["kd"]
        points = [{temperature = 10, alpha = 0.2}, {temperature = 4, alpha = 0.9}]

    Writes results.md ("Temperature | Alpha | Score"),
    CSV tables and results.png into out.

    Example: kdpipe sweep sweep-resnet --dry-run   (lists the cells of the shipped
    kdpipe/configs/sweep-resnet.toml)
    """
    from kdpipe.sweep import run_sweep

    result = run_sweep(sweep_file, out=config.out, dry_run=config.dry_run,
                       executor=config.executor, ray_address=config.ray_address,
                       shared_storage=config.shared_storage)
    if not config.dry_run:
        console.print(
            f"{plural(len(result['ran']), 'cell')} run, {len(result['skipped'])} already done; "
            f"report: {result['files'].get('markdown', '(no finished cell)')}"
        )


@config_command(app, EvalConfig, "eval", user_modules=True)
def eval_(
    config: EvalConfig,
    checkpoint: Path = typer.Argument(..., help="kdpipe checkpoint or pytorch_resnet_cifar10 file"),
) -> None:
    """Print the top-1 accuracy of a checkpoint on the test set."""
    from kdpipe.train.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, **to_dict(config))
    console.print(f"top-1 {result['top1']:.2f}% on {result['n']} test images ({checkpoint})")


def support_appendix() -> Any:
    """The targets and their --quantize values as a table under `kdpipe export --help` (built
    when help is shown: the target registry imports PyTorch)."""
    from rich.table import Table
    from rich.text import Text

    from kdpipe.export.config import SUPPORT_HEADER, support_rows

    table = Table(*SUPPORT_HEADER[:-1], "pip install", box=None, padding=(0, 1),
                  header_style="bold", title="\nTargets and their --quantize values",
                  title_justify="left")
    table.columns[-1].no_wrap = True
    for row in support_rows():
        table.add_row(*map(Text, row))  # Text: `kdpipe[coreml]` is not markup
    return table


@config_command(app, ExportConfig, user_modules=True, appendix=support_appendix)
def export(
    config: ExportConfig,
    checkpoint: Path = typer.Argument(..., help="kdpipe checkpoint or pytorch_resnet_cifar10 file"),
) -> None:
    """Export a checkpoint for devices; each artifact is checked against PyTorch in its runtime.

    Writes each artifact with a `<artifact>.json` metadata sidecar into --out. The model's input
    normalization is folded in: artifacts take RGB floats in [0, 1], NCHW. An artifact that fails
    its parity check is not written, and the command exits non-zero.

    Parity gates, on --parity-size test images: FP32 agrees with PyTorch on >= 99.9% of top-1s;
    FP16/INT8 lose <= 1 point of top-1; INT8 also agrees on >= 97% of top-1s, and ONNX Runtime's
    integer kernels agree >= 98% with the file's float simulation (saturating int8 kernels on
    CPUs without VNNI fail here). The sidecar records the gate and the CPU it ran on.

    --batch-sizes 1 gives a fully static input shape: what NNAPI and Core ML need on phones.

    Example: kdpipe export model.pt --target onnx --quantize none,int8 --out export/
    """
    from kdpipe.export import ExportFailed, print_results, run_export

    try:
        with quiet.native_stderr():  # the exporters' and runtimes' C++ lines
            results = run_export(checkpoint, config)
        print_results(results)
    except ExportFailed as e:
        print_results(e.results)
        raise


@config_command(app, BenchConfig)
def bench(
    config: BenchConfig,
    artifacts: list[Path] = typer.Argument(..., help="exported files and/or checkpoints"),
) -> None:
    """Accuracy, latency, throughput and memory of each file in its runtimes, in one report.

    Example: kdpipe bench runs/export/resnet20.onnx runs/train/model.pt --batch-sizes 1,32
    """
    from kdpipe.bench import run_bench
    from kdpipe.bench.bench import failed_runs
    from kdpipe.report.bench_report import console_table

    with quiet.native_stderr():  # the runtimes' C++ lines
        report, files = run_bench(artifacts, config)
    console.print(console_table(report.rows), markup=False, highlight=False, soft_wrap=True)
    console.print("report: " + ", ".join(str(path) for path in files.values()))
    failed = failed_runs(report)
    for name, runtime, reason in failed:  # the report has them too, but a script reads the exit
        console.print(f"failed: {name} on {runtime}: {reason}", highlight=False, markup=False,
                      soft_wrap=True)
    if failed:
        runs = len({(r.name, r.runtime) for r in report.rows})
        raise fail(f"{len(failed)} of {plural(runs, 'run')} failed (listed above); the report "
                   "has the others", code=1)


@dataclass
class DeployConfig:
    """`kdpipe deploy`: where the bundle goes (the artifact is the command's argument)."""

    out: str | None = option(None, "folder to write the bundle into (required)")


@config_command(app, DeployConfig)
def deploy(
    config: DeployConfig,
    artifact: Path = typer.Argument(
        ..., help="an exported file (.onnx, .ort, .pte, .pt, .mlpackage)"),
) -> None:
    """Bundle an exported model for an app: the file, its metadata, labels and a usage snippet."""
    from kdpipe.deploy import build_bundle

    if config.out is None:
        raise fail("deploy needs --out FOLDER (or out = ... in --config)")
    console.print(f"bundle: {build_bundle(artifact, Path(config.out))}")


@app.command("list", cls=Command)
@friendly_errors
def list_(
    user_modules: Optional[str] = import_option(),  # noqa: UP045 - typer needs typing.Optional
) -> None:
    """Show the models, methods, export targets and runtimes, and what is installed."""
    from rich.console import Console

    from kdpipe.catalog import print_catalog

    if user_modules:
        import_modules(comma_list(user_modules, str, "--import"))
    print_catalog(Console())


@config_command(app, PipelineConfig, file_argument="pipeline config file (TOML/YAML), or a "
                "shipped one: quickstart (default), full", load=load_pipeline_config)
def pipeline(config: PipelineConfig) -> None:
    """Run distill -> export -> bench from one config and write one report (index.md).

    Re-running skips the stages whose outputs are complete and match the config, so an
    interrupted pipeline resumes where it stopped. Example: kdpipe pipeline (the quickstart).
    With --executor ray the training runs and each model's exports run as parallel Ray tasks
    (pip install 'kdpipe[ray]'); bench and the report run here.
    """
    from kdpipe.pipeline import run_pipeline

    index = run_pipeline(config)
    console.print(f"report: {index}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
