"""The bench report's JSON schema, version 2: what each field means, in one place.

`kdpipe bench` writes `bench.json` as one `BenchReport` (below) with `schema_version: 2`. A
reader checks `schema_version` first (`load_bench_report` does, and reads every version from 1 on);
fields are added only with a new version. Version 2 added `BenchRow.spread` and `BenchRow.noisy`
(a version-1 row gets them computed from its p50 and p90 when it loads). Every row is a
`BenchRow`; its field names are shared with the train summaries and the export parity reports
(`top1`, `params`, `macs`, `size_bytes`, ...), so one table writer serves all.
`docs/latency-protocol.md` explains how the latency fields are measured.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kdpipe.errors import KdpipeError

SCHEMA_VERSION = 2
REPORT_KIND = "kdpipe.bench"

Status = Literal["ok", "skipped", "failed"]

# p90/p50 above this says other work shared the CPU while timing: a tenth of the calls took half
# as long again as the median (a quiet machine stays near 1.1; the protocol's noise is ~10%).
NOISY_SPREAD = 1.5


@dataclass
class BenchRow:
    """One (artifact, runtime, batch size) measurement.

    Fields (None where not measured, e.g. on a skipped row):

    - `name`: the artifact's file name, e.g. `resnet20-int8.onnx`.
    - `runtime`: the runtime's registry name (`eager`, `torchscript`, `onnxruntime`, `executorch`,
      `coreml`, `tensorrt`, ...); over ssh `RUNTIME@ssh://host[:port]`.
    - `format`: the artifact format: `checkpoint`, `torchscript`, `onnx`, `executorch`, `coreml`.
    - `quantization`: `fp32`, `fp16`, `int8`, ... as the artifact's metadata says.
    - `top1`: top-1 accuracy in percent on the test images (`BenchReport.data` says which), or None
      when accuracy was not measured (e.g. `--no-accuracy`, or latency-only on a remote device).
    - `params`: parameters of the model; `macs`: multiply-accumulates per image (batch 1).
    - `size_bytes`: bytes on disk of the artifact (a folder's total for `.mlpackage`).
    - `batch_size`: images per call.
    - `p50_ms`, `p90_ms`, `p99_ms`: percentiles of the per-call latency in milliseconds.
    - `throughput_ips`: images per second = batch_size x timed calls / total timed seconds.
    - `peak_rss_mb`: peak resident memory in MiB (2**20 bytes) of a fresh process that loaded the
      artifact and ran it at every benched batch size (the same value on each of its rows).
    - `status`: `ok`, `skipped` (could not run here: `reason` says why and how to fix it) or
      `failed` (it should have run and did not: `reason` has the error).
    - `reason`: empty when `ok` without caveats; otherwise why it was skipped or failed, or a note.
    - `spread`: p90_ms / p50_ms (None without both), how steady the timing was (v2).
    - `noisy`: True when `spread` > 1.5: the machine was busy while timing, rerun (v2).
    """

    name: str
    runtime: str
    format: str
    quantization: str
    top1: float | None
    params: int | None
    macs: int | None
    size_bytes: int | None
    batch_size: int
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    throughput_ips: float | None = None
    peak_rss_mb: float | None = None
    status: Status = "ok"
    reason: str = ""
    spread: float | None = None
    noisy: bool = False

    def __post_init__(self) -> None:
        # Derived here, not by each writer, so every row (and each v1 row read back) carries them.
        if self.spread is None and self.p50_ms and self.p90_ms is not None:
            self.spread = round(self.p90_ms / self.p50_ms, 3)
        self.noisy = self.noisy or (self.spread is not None and self.spread > NOISY_SPREAD)


@dataclass
class BenchReport:
    """One `kdpipe bench` run.

    - `schema_version`: 2. `kind`: `"kdpipe.bench"`.
    - `created_utc`: ISO 8601 time the report was written.
    - `device`: `local` or `ssh://host[:port]`, where the numbers were measured.
    - `machine`: the measuring machine: `cpu` (model name), `cpu_count` (logical cores),
      `threads` (threads given to every runtime), `platform`, `python`, plus, when local, the
      fields of `kdpipe.runinfo.environment()` (`torch`, `kdpipe`, `git_commit`, ...).
    - `host`: the machine kdpipe ran on when `device` is remote (same fields), else None.
    - `runtimes`: runtime name -> version of the package doing the work (None: not installed).
    - `protocol`: `warmup`, `iters`, `time_budget_s`, `min_time_s` (a free-form record: a key
      added here, such as `min_time_s`, is not a schema change), `threads`, `batch_sizes`,
      `input` (how the timed input is made), `percentiles` (how they are computed), `timer`.
    - `data`: `source` and `n_test` of the test images behind `top1`, or None.
    - `notes`: caveats a reader needs (e.g. a runtime without a thread setting).
    - `rows`: the `BenchRow`s, in the order benched.
    """

    device: str
    machine: dict[str, Any]
    runtimes: dict[str, str | None]
    protocol: dict[str, Any]
    rows: list[BenchRow]
    created_utc: str
    data: dict[str, Any] | None = None
    host: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    kind: str = REPORT_KIND

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values, `schema_version` first for readers that peek."""
        body = dataclasses.asdict(self)
        head = {"schema_version": body.pop("schema_version"), "kind": body.pop("kind")}
        return {**head, **body}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> BenchReport:
        version = values.get("schema_version")
        if (values.get("kind") != REPORT_KIND or not isinstance(version, int)
                or not 1 <= version <= SCHEMA_VERSION):
            raise KdpipeError(f"not a kdpipe bench report of schema_version 1 to {SCHEMA_VERSION} "
                              f"(kind={values.get('kind')!r}, schema_version={version!r})")
        rows = [BenchRow(**row) for row in values["rows"]]
        # Read as this version: v1's rows got their v2 fields from __post_init__.
        return cls(**{**values, "rows": rows, "schema_version": SCHEMA_VERSION})


def load_bench_report(path: str | Path) -> BenchReport:
    """Read a `bench.json`, checking its kind and schema version."""
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise KdpipeError(f"cannot read bench report {path}: {e}") from None
    return BenchReport.from_json(values)
