"""`kdpipe pipeline`: teacher -> scratch + distilled students -> exports -> bench -> report.

Each stage is a call of the stage's library API (`train_baseline`, `distill`, `export_checkpoint`,
`run_bench`) in its own folder under `out/`. A stage's folder holds `stage.json` with the content
hash of everything that decides its output (its config and the sha256 of its input files); a
re-run skips a stage whose hash matches and which completed, resumes one that was interrupted
(the trainers' `--resume`), and redoes one whose inputs changed. The report (`index.md`,
`pipeline.json`) gathers the tables and plots of all stages.

The independent stages (the scratch baseline and each distill method; then each model's
exports) are items for an executor (`kdpipe.executors`): one after another here (`local`, the
default) or as Ray tasks (`executor = "ray"`), exactly as a sweep's cells. The stage functions
(`run_training`, `run_exports`) do the same work wherever they run, so the report is the same;
bench and the report run here, after them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Any

from kdpipe import atomic, runlock
from kdpipe.bench.config import BenchConfig
from kdpipe.config import (
    Partial,
    find_config_file,
    from_dict,
    option,
    read_config_file,
    results_only,
    shipped_configs,
    to_dict,
)
from kdpipe.errors import KdpipeError
from kdpipe.executors.base import Executor, Resources, Work, ordered_by_cache, teacher_cache_key
from kdpipe.export.config import ExportConfig
from kdpipe.hashing import file_sha256, path_sha256
from kdpipe.progress import console
from kdpipe.report.recommend import Constraints, ShipLimits
from kdpipe.report.records import load_train_summary, run_line
from kdpipe.train.config import DistillConfig, TrainConfig

DEFAULT_CONFIG = "quickstart"
SHARED_TEACHER = Path("shared") / "weights" / "resnet56-4bfd9763.th"
DISTILL_SET_BY_PIPELINE = ("model", "student", "method", "teacher_checkpoint", "out")


@dataclass
class ExportSpec:
    """One artifact kind every model is exported to."""

    target: str = option("onnx", "torchscript | onnx | ort | coreml | executorch")
    quantize: str = option("none", "none | fp16 | int8")


@dataclass
class PipelineConfig(ShipLimits):
    """The whole path from teacher to device report; shipped examples in `kdpipe/configs/`.
    Its limits (`ShipLimits`) choose what index.md recommends; unset ones fall back on [bench]'s."""

    out: str = option("runs/pipeline", "report folder; every stage writes below it")
    data: str | None = option(None, "data set [default: ../shared/datasets/cifar10-images.tar.gz]")
    download: bool = option(False, "allow downloads: CIFAR-10 via torchvision, the teacher's URL")
    cache_dir: str | None = option(None, "image cache [default: $KDPIPE_CACHE or ~/.cache/kdpipe]")
    teacher_checkpoint: str | None = option(
        None, "teacher weights [default: ../shared/weights/resnet56-4bfd9763.th if present]")
    teacher_url: str | None = option(None, "where --download fetches the teacher from")
    student: str = option("resnet20", "student model")
    scratch: bool = option(True, "also train the student from scratch, the baseline")
    methods: list[str] = option(help="distillation methods, e.g. [kd, rkd]", factory=lambda: ["kd"])
    # Tables of some options each, checked key by key and type by type when the file loads.
    train: Annotated[dict, Partial(TrainConfig, exclude=("model", "out"))] = option(
        help="`kdpipe train` options shared by scratch and distill runs (epochs, lr, ...); the "
             "model and out come from the pipeline", factory=dict)
    distill: Annotated[dict, Partial(DistillConfig, exclude=DISTILL_SET_BY_PIPELINE)] = option(
        help="`kdpipe distill` options of the methods (temperature, ...); the student, method, "
             "teacher and out come from the pipeline", factory=dict)
    export: list[ExportSpec] = option(help="artifacts of every model", factory=list)
    export_options: ExportConfig = option(
        help="`kdpipe export` options shared by every export (parity_size, batch_sizes, ...); "
             "target, quantize, out and name come from [[export]] and the pipeline",
        factory=ExportConfig)
    export_teacher: bool = option(True, "export and bench the teacher too")
    bench: BenchConfig = option(help="`kdpipe bench` options (batch_sizes, iters, ...); data and "
                                "out come from the pipeline", factory=BenchConfig)
    progress: bool = option(True, "show progress bars")
    # Where the stages run; never what they compute (the stage hashes leave these out).
    executor: str = option("local", "where the training runs and each model's exports run: "
                           "local (one after another, here) or ray (parallel Ray tasks; needs "
                           "pip install 'kdpipe[ray]'); bench and the report always run here",
                           result=False)
    ray_address: str | None = option(None, "Ray cluster to join (auto, ray://host:10001) "
                                     "[default: start a local Ray instance]", result=False)
    shared_storage: bool = option(False, "confirm --out is on a filesystem every Ray node mounts "
                                  "at the same path (needed on a multi-node cluster)",
                                  result=False)
    resources: Resources = option(help="what each Ray task reserves (num_cpus, num_gpus)",
                                  factory=Resources, result=False)
    def constraints(self) -> Constraints:
        """The limits on the report's recommendation: its own (`ShipLimits`), else `bench`'s."""
        own, bench = super().constraints(), self.bench.constraints()
        return Constraints(**{name: getattr(own, name) if getattr(own, name) is not None
                              else getattr(bench, name) for name in vars(own)})


# ---------------------------------------------------------------- configuration
def builtin_configs() -> list[str]:
    """Names of the pipeline configs shipped inside the package (`kdpipe pipeline NAME`); the
    `sweep-*` files beside them are `kdpipe sweep`'s."""
    return [name for name in shipped_configs() if not name.startswith("sweep-")]


def load_pipeline_config(source: str | None, overrides: dict[str, Any]) -> PipelineConfig:
    """A config file path, or the name of a shipped one (default: quickstart), plus flags."""
    name = source or DEFAULT_CONFIG
    values = read_config_file(find_config_file(name))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(PipelineConfig, values, where=f"pipeline config {name}")


def find_shared(relative: Path) -> Path | None:
    """`../shared/...` beside the working folder or beside the kdpipe checkout, if present."""
    here = Path(__file__).resolve().parents[1]
    for base in (Path.cwd().parent, here.parent):
        if (base / relative).exists():
            return base / relative
    return None


def resolve_teacher(config: PipelineConfig) -> Path | None:
    """The teacher checkpoint path: given, shared, or downloaded when the user allowed it."""
    if config.teacher_checkpoint:
        return Path(config.teacher_checkpoint) if Path(config.teacher_checkpoint).exists() else None
    shared = find_shared(SHARED_TEACHER)
    if shared:
        return shared
    if config.download and config.teacher_url:
        return download(config.teacher_url, Path(config.out) / "teacher" / "downloaded.th")
    return None


def resolve_inputs(config: PipelineConfig) -> tuple[str, Path]:
    """The data set and the teacher, or one message that says how to get what is missing."""
    from kdpipe.data import default_data_path  # torch: off the `--help` path

    data = config.data or default_data_path()
    if data is None and config.download:
        data = Path(config.out) / "data"  # torchvision downloads CIFAR-10 here
    teacher = resolve_teacher(config)
    missing = []
    if data is None:
        missing.append("the data set (the default reads ../shared/datasets/"
                       "cifar10-images.tar.gz): pass --data PATH, an ImageFolder tree or a "
                       ".tar.gz of one, or --download to let torchvision fetch CIFAR-10")
    if teacher is None:
        where = config.teacher_checkpoint or "../shared/weights/resnet56-4bfd9763.th"
        hint = " or --download to fetch the config's teacher_url" if config.teacher_url else ""
        missing.append(f"the teacher ({where} not found): pass --teacher-checkpoint PATH, any "
                       f"kdpipe checkpoint or pytorch_resnet_cifar10 file,{hint}")
    if missing:
        raise KdpipeError("the pipeline needs " + "; and ".join(missing))
    return str(data), teacher


def download(url: str, dest: Path) -> Path:
    """Fetch `url` atomically (only ever called after the user passed --download)."""
    if dest.exists():
        return dest
    import torch.hub

    console.print(f"downloading {url}")
    try:
        with atomic.atomic_path(dest) as tmp:
            torch.hub.download_url_to_file(url, str(tmp), progress=True)
    except OSError as e:
        raise KdpipeError(f"could not download {url}: {e}") from None
    return dest


# ---------------------------------------------------------------- stage bookkeeping
STAGE_FILE = "stage.json"  # a stage folder's hash and completeness, written before anything else


def content_hash(spec: Any) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def run_stage(folder: Path, spec: dict[str, Any], work: Callable[[bool], Any]) -> bool:
    """Run `work(resume)` in `folder` unless a complete run with the same `spec` is there.

    Returns True when it ran. A stage folder of kdpipe's left by another spec is cleared first,
    so stale files never mix with new ones; an incomplete one with the same spec is resumed. A
    folder kdpipe did not create (files but no `stage.json`) is refused, never deleted: kdpipe
    writes `stage.json` before anything else, so only a user's own files lack it.
    """
    marker = folder / STAGE_FILE
    key = content_hash(spec)
    if stage_done(folder, spec):
        return False
    state = _stage_state(folder)
    if state and state["hash"] != key:
        console.print(f"[dim]{folder.name}: its inputs or settings changed, redone[/]")
        shutil.rmtree(folder)
    resume = state is not None and state["hash"] == key
    folder.mkdir(parents=True, exist_ok=True)
    atomic.write_json(marker, {"hash": key, "complete": False, "spec": spec})
    work(resume)
    atomic.write_json(marker, {"hash": key, "complete": True, "spec": spec})
    return True


def stage_done(folder: Path, spec: dict[str, Any]) -> bool:
    """Whether `folder` holds a complete run of `spec` (said on the console when it does); a
    `KdpipeError` for a folder kdpipe did not create, so that is refused before any work."""
    state = _stage_state(folder)
    if state and state["hash"] == content_hash(spec) and state["complete"]:
        console.print(f"[dim]{folder.name}: up to date, skipped[/]")
        return True
    return False


def _stage_state(folder: Path) -> dict[str, Any] | None:
    """The `stage.json` of a kdpipe stage folder; None for a missing or empty folder; a
    `KdpipeError` for a folder that holds files kdpipe did not write."""
    marker = folder / STAGE_FILE
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return None
    try:
        state = json.loads(marker.read_text())
        if isinstance(state, dict) and isinstance(state.get("hash"), str):
            return state
    except (OSError, ValueError):
        pass
    what = "a file" if not folder.is_dir() else (
        "a folder kdpipe did not create (it has no kdpipe stage.json), holding "
        + ", ".join(sorted(p.name for p in folder.iterdir())[:5]))
    raise KdpipeError(f"{folder} is {what}; the pipeline keeps a stage there and deletes only "
                      "what it wrote: move it out of the way, or choose another --out")


# ---------------------------------------------------------------- the stages
@dataclass
class TrainRun:
    """One training stage, an executor's item: the scratch baseline (a `TrainConfig`) or one
    distill method (a `DistillConfig`), with the stage hash's `spec`."""

    name: str
    config: TrainConfig
    spec: dict[str, Any]

    @property
    def folder(self) -> Path:
        return Path(self.config.out)


def plan_training(config: PipelineConfig, data: str, teacher: Path) -> list[TrainRun]:
    """The scratch baseline and one distill run per method, in that order."""
    out = Path(config.out)
    common = {"data": data, "download": config.download, "cache_dir": config.cache_dir,
              "progress": config.progress, **config.train}
    runs: list[TrainRun] = []
    if config.scratch:
        cfg = from_dict(TrainConfig, {**common, "model": config.student,
                                      "out": str(out / "scratch")}, where="pipeline train")
        runs.append(TrainRun("scratch", cfg, {"config": results_only(cfg)}))
    teacher_sha256 = file_sha256(teacher) if config.methods else None
    for method in config.methods:
        name = method.replace("+", "-")
        cfg = from_dict(DistillConfig, {**common, **config.distill, "model": config.student,
                                        "method": method, "teacher_checkpoint": str(teacher),
                                        "out": str(out / name)}, where="pipeline distill")
        runs.append(TrainRun(name, cfg, {"config": results_only(cfg),
                                         "teacher_sha256": teacher_sha256}))
    return runs


def run_training(run: TrainRun) -> None:
    """Run (or resume) one training stage in its folder, in whichever process the executor
    chose; the trainers are looked up here, at call time, so tests can stand in for them."""
    from kdpipe.train import train_baseline
    from kdpipe.train.distill import distill

    train = distill if isinstance(run.config, DistillConfig) else train_baseline
    run_stage(run.folder, run.spec, lambda resume: train(run.config, resume=resume))
    (run.folder / ERROR_FILE).unlink(missing_ok=True)  # an earlier try's, now stale


def train_students(config: PipelineConfig, data: str, teacher: Path,
                   executor: Executor) -> dict[str, Path]:
    """Scratch baseline and one distilled student per method on `executor`; returns name ->
    model.pt. A failed run does not stop the others; the stage then ends in a `KdpipeError`
    naming it (a re-run redoes only that one)."""
    runs = plan_training(config, data, teacher)
    # The first run of this call that fills a teacher cache goes before the runs reading it.
    work = ordered_by_cache([Work(r.name, r.folder, r) for r in runs
                             if not stage_done(r.folder, r.spec)],
                            lambda run: teacher_cache_key(run.config))
    outcome = executor.run(work, run_training)
    failed = {name: error for name, error in outcome.items() if error is not None}
    if failed:
        listed = "; ".join(f"{name}: {error}" for name, error in failed.items())
        raise KdpipeError(f"{len(failed)} of {len(runs)} training runs failed ({listed}); see "
                          f"{ERROR_FILE} in their folders under {config.out}, then run the "
                          "pipeline again (the finished runs are kept)")
    return {r.name: r.folder / "model.pt" for r in runs}


@dataclass
class FailedArtifact:
    """An export job that failed: the model, the target and quantization, and why."""

    model: str
    target: str
    quantize: str
    reason: str


class ExportStageFailed(KdpipeError):
    """Some exports of one model failed; the others are in its folder and in `done.json`."""

    def __init__(self, failed: list[FailedArtifact]) -> None:
        self.failed = failed
        super().__init__("; ".join(f"{f.model} {f.target} {f.quantize}: {f.reason}"
                                   for f in failed))


EXPORT_LEDGER = "done.json"  # export jobs finished in a stage folder: "target:quantize" -> files
EXPORT_FAILURES = "failed.json"  # the export jobs of a stage folder's last try that failed
ERROR_FILE = "error.txt"  # the traceback of a stage that raised, written by the executor


@dataclass
class ExportRun:
    """One model's export stage, an executor's item: every [[export]] spec of `checkpoint` into
    `options.out`, with the stage hash's `spec`."""

    name: str
    checkpoint: Path
    options: ExportConfig
    specs: list[ExportSpec]
    spec: dict[str, Any]

    @property
    def folder(self) -> Path:
        return Path(self.options.out)


def plan_exports(config: PipelineConfig, data: str, models: dict[str, Path]) -> list[ExportRun]:
    """One export stage per model, in `out/export/<name>/`."""
    runs: list[ExportRun] = []
    for name, checkpoint in models.items():
        options = replace(config.export_options, out=Path(config.out) / "export" / name,
                          name=name, calibration_data=data, download=config.download)
        spec = {"checkpoint_sha256": file_sha256(checkpoint), "options": to_dict(options),
                "export": [to_dict(e) for e in config.export]}
        runs.append(ExportRun(name, checkpoint, options, list(config.export), spec))
    return runs


def run_exports(run: ExportRun) -> None:
    """Run (or resume) one model's export stage in whichever process the executor chose.

    Failed jobs are written to the folder's `failed.json` instead of raised: the executor may
    run this in another process, and the pipeline reads them from there to report them beside
    the artifacts that did export."""
    failures = run.folder / EXPORT_FAILURES

    def work(resume: bool) -> None:
        failures.unlink(missing_ok=True)  # only once run_stage has checked the folder is ours
        export_jobs(run.name, run.checkpoint, run.options, run.specs, resume)

    try:
        run_stage(run.folder, run.spec, work)
    except ExportStageFailed as e:  # the stage stays incomplete: a re-run retries just these
        atomic.write_json(failures, [asdict(f) for f in e.failed])
    (run.folder / ERROR_FILE).unlink(missing_ok=True)  # an earlier try's, now stale


def export_models(config: PipelineConfig, data: str, models: dict[str, Path],
                  executor: Executor) -> tuple[list[Path], list[FailedArtifact]]:
    """Every model to every `export` spec on `executor`, each model in `out/export/<name>/`.

    Returns the artifacts and the failed jobs. A failed job does not stop the others: they are
    exported, benched and reported, and the failed one is listed with its reason. A re-run
    retries only the failed jobs (the folder's `done.json` lists the finished ones). A stage
    that broke off (its worker died, its checkpoint would not load) counts its unfinished jobs
    as failed, with the stage's error.
    """
    runs = plan_exports(config, data, models)
    work = [Work(r.name, r.folder, r, record=STAGE_FILE) for r in runs
            if not stage_done(r.folder, r.spec)]
    outcome = executor.run(work, run_exports)
    artifacts: list[Path] = []
    failed: list[FailedArtifact] = []
    for run in runs:
        error = outcome.get(run.name)
        if error is not None:
            done = _ledger(run.folder)
            failed += [FailedArtifact(run.name, e.target, e.quantize, error) for e in run.specs
                       if f"{e.target}:{e.quantize}" not in done]
        elif (run.folder / EXPORT_FAILURES).exists():
            records = json.loads((run.folder / EXPORT_FAILURES).read_text(encoding="utf-8"))
            failed += [FailedArtifact(**r) for r in records]
        artifacts += exported_files(run.folder)
    return artifacts, failed


def export_jobs(name: str, checkpoint: Path, options: ExportConfig, specs: list[ExportSpec],
                resume: bool) -> None:
    """Run each export spec not yet done in `options.out`, recording the files each wrote in its
    `done.json`; raise `ExportStageFailed` at the end if any failed, so the stage stays
    incomplete and a re-run retries just those."""
    from kdpipe import quiet
    from kdpipe.export import ExportFailed, run_export

    folder = Path(options.out)
    ledger = folder / EXPORT_LEDGER
    done = _ledger(folder) if resume else {}
    failed = []
    for e in specs:
        key = f"{e.target}:{e.quantize}"
        if key in done and all((folder / f).exists() for f in done[key]):
            console.print(f"[dim]{name} {e.target} {e.quantize}: exported before, kept[/]")
            continue
        try:
            with quiet.native_stderr():  # ExecuTorch's C++ lines, as `kdpipe export` hides them
                results = run_export(checkpoint, replace(options, target=[e.target],
                                                         quantize=[e.quantize]))
        except ExportFailed as err:
            failed += [FailedArtifact(name, r.target, r.quantize, r.reason)
                       for r in err.results if r.status == "failed"]
            continue
        done[key] = [r.path.name for r in results if r.path is not None]
        atomic.write_json(ledger, done)
    if failed:
        raise ExportStageFailed(failed)


def _ledger(folder: Path) -> dict[str, list[str]]:
    """The folder's `done.json`: finished export jobs, "target:quantize" -> the files written."""
    ledger = folder / EXPORT_LEDGER
    return json.loads(ledger.read_text(encoding="utf-8")) if ledger.exists() else {}


def exported_files(folder: Path) -> list[Path]:
    """The artifacts the export jobs of `folder` returned, as its `done.json` records them."""
    return [folder / f for files in _ledger(folder).values() for f in files
            if (folder / f).exists()]


def bench_everything(config: PipelineConfig, data: str, files: list[Path]) -> Path:
    """Bench the checkpoints (PyTorch eager) and every artifact side by side in one run."""
    from kdpipe.bench import run_bench

    folder = Path(config.out) / "bench"
    bench = replace(config.bench, data=data, download=config.download,
                    cache_dir=config.cache_dir, progress=config.progress, out=str(folder))
    spec = {"files": {str(p): path_sha256(p) for p in files}, "bench": results_only(bench)}
    run_stage(folder, spec, lambda resume: run_bench([str(p) for p in files], bench))
    return folder


# ---------------------------------------------------------------- entry point
def run_pipeline(config: PipelineConfig) -> Path:
    """Run (or resume) every stage; returns the path of the report's `index.md`.

    `out` is locked for the whole run: a second pipeline on it is refused, not interleaved.
    The training runs and the exports run on `config.executor`; bench and the report here.
    """
    executor = make_executor(config)  # before any work: `ray` without Ray says how to install it
    with runlock.hold(config.out, purpose="--out"):
        return _run_stages(config, executor)


def make_executor(config: PipelineConfig) -> Executor:
    """The executor `config` names (`local`, `ray`), set up from its Ray options."""
    from kdpipe.executors import EXECUTORS

    return EXECUTORS.get(config.executor)(address=config.ray_address,
                                          shared_storage=config.shared_storage,
                                          **to_dict(config.resources))


def _run_stages(config: PipelineConfig, executor: Executor) -> Path:
    from kdpipe.report.pipeline_report import write_pipeline_report

    data, teacher = resolve_inputs(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "config.json", to_dict(config))
    console.rule("[bold]1/3 distill")
    students = train_students(config, data, teacher, executor)
    for name, checkpoint in students.items():  # one line per run, skipped (up-to-date) ones too
        console.print(run_line(name, load_train_summary(checkpoint.parent).to_json()),
                      highlight=False)
    models = {"teacher": teacher, **students} if config.export_teacher else dict(students)
    console.rule("[bold]2/3 export")
    artifacts, failed = (export_models(config, data, models, executor) if config.export
                         else ([], []))
    console.rule("[bold]3/3 bench")
    bench = bench_everything(config, data, [*models.values(), *artifacts])
    index = write_pipeline_report(out, config=to_dict(config), teacher=teacher,
                                  students=students, artifacts=artifacts, bench_dir=bench,
                                  failed=[asdict(f) for f in failed],
                                  constraints=config.constraints())
    if failed:
        raise PipelineIncomplete(index, failed)
    return index


class PipelineIncomplete(KdpipeError):
    """The report was written, but some artifacts failed; re-running retries only those."""

    def __init__(self, index: Path, failed: list[FailedArtifact]) -> None:
        self.index = index
        self.failed = failed
        lines = "; ".join(f"{f.model} {f.target} {f.quantize}: {f.reason}" for f in failed)
        super().__init__(f"{len(failed)} artifact(s) failed and were left out (the report "
                         f"{index} lists them): {lines}. Run the same command again to retry "
                         "only those.")
