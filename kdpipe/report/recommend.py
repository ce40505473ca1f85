"""What to ship: the Pareto-optimal rows per runtime and the best row that meets the user's limits.

Pure functions over `BenchRow`s (no I/O), so the bench and pipeline reports say the same thing.

Latency is compared with a tolerance: two p50s within `LATENCY_TOLERANCE` of each other are the
same number as far as the latency protocol can tell (back-to-back runs differ by up to ~10%,
docs/latency-protocol.md). Without it a scratch model 0.02 ms faster than its distilled twin would
sit on the front and look like a choice, when the only real difference between them is top-1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kdpipe.config import option
from kdpipe.report.schema import BenchRow

LATENCY_TOLERANCE = 0.10  # relative: p50s within 10% count as equal (the protocol's noise)
MIB = 1 << 20


@dataclass(frozen=True)
class Constraints:
    """The user's limits; None = no limit. Sizes in MiB (2**20 bytes), as the report shows them."""

    min_top1: float | None = None
    max_latency_ms: float | None = None
    max_size_mb: float | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.min_top1, self.max_latency_ms, self.max_size_mb))

    def failures(self, row: BenchRow) -> list[str]:
        """Which limits `row` misses, in words (empty: it meets them all)."""
        out = []
        if self.min_top1 is not None and (row.top1 or 0.0) < self.min_top1:
            out.append(f"top-1 {row.top1:.2f}% < {self.min_top1:g}%")
        if self.max_latency_ms is not None and (row.p50_ms or 0.0) > self.max_latency_ms:
            out.append(f"p50 {row.p50_ms:.3f} ms > {self.max_latency_ms:g} ms")
        if self.max_size_mb is not None and (row.size_bytes or 0) / MIB > self.max_size_mb:
            out.append(f"size {(row.size_bytes or 0) / MIB:.2f} MiB > {self.max_size_mb:g} MiB")
        return out


@dataclass
class ShipLimits:
    """The limit options of `kdpipe bench` and `kdpipe pipeline` (both configs inherit them):
    the report recommends the most accurate artifact within them. Report-only: no result or stage
    hash depends on them."""

    min_top1: float | None = option(None, "recommend only artifacts of at least this top-1 (%)",
                                    result=False)
    max_latency_ms: float | None = option(None, "recommend only artifacts whose batch-1 p50 is "
                                          "at most this many milliseconds", result=False)
    max_size_mb: float | None = option(None, "recommend only artifacts of at most this size in "
                                       "MiB (2**20 bytes)", result=False)

    def constraints(self) -> Constraints:
        return Constraints(min_top1=self.min_top1, max_latency_ms=self.max_latency_ms,
                           max_size_mb=self.max_size_mb)


@dataclass
class Recommendation:
    """`front`: runtime -> its Pareto-optimal rows by latency; `best`: the pick (None: nothing
    meets the limits, or nothing was measured); `others`: every other candidate with why not."""

    batch_size: int | None
    constraints: Constraints
    front: dict[str, list[BenchRow]] = field(default_factory=dict)
    best: BenchRow | None = None
    others: list[tuple[BenchRow, str]] = field(default_factory=list)
    emulated: int = 0  # measured rows left out because an emulator timed them


def measured(row: BenchRow) -> bool:
    return row.status == "ok" and row.top1 is not None and row.p50_ms is not None


def emulated(row: BenchRow) -> bool:
    return "emulated" in row.reason


def candidates(rows: Sequence[BenchRow]) -> tuple[list[BenchRow], int | None]:
    """Rows that can be compared: ok, with a top-1 and a p50, not emulated (an emulator's latency
    is no claim), at batch size 1 (else the smallest benched); and that batch size."""
    usable = [r for r in rows if measured(r) and not emulated(r)]
    if not usable:
        return [], None
    batch = 1 if any(r.batch_size == 1 for r in usable) else min(r.batch_size for r in usable)
    return [r for r in usable if r.batch_size == batch], batch


def same_latency(a: float, b: float, tolerance: float = LATENCY_TOLERANCE) -> bool:
    return abs(a - b) <= tolerance * min(a, b)


def dominates(a: BenchRow, b: BenchRow, tolerance: float = LATENCY_TOLERANCE) -> bool:
    """`a` is at least as accurate and not slower beyond the noise, and better on one of them."""
    assert a.top1 is not None and b.top1 is not None and a.p50_ms is not None
    assert b.p50_ms is not None
    if a.top1 < b.top1 or a.p50_ms > b.p50_ms * (1 + tolerance):
        return False
    return a.top1 > b.top1 or a.p50_ms < b.p50_ms


def tolerant_front(rows: Sequence[BenchRow],
                   tolerance: float = LATENCY_TOLERANCE) -> list[BenchRow]:
    """The rows no other row dominates (with the latency tolerance), fastest first."""
    kept = [r for r in rows if not any(dominates(o, r, tolerance) for o in rows if o is not r)]
    return sorted(kept, key=lambda r: (r.p50_ms, -(r.top1 or 0.0)))


def _rank(row: BenchRow) -> tuple[float, float, int]:
    """Highest top-1 (as shown, 2 decimals), then lowest latency, then smallest file."""
    return (-round(row.top1 or 0.0, 2), row.p50_ms or 0.0, row.size_bytes or 0)


def _why_not(row: BenchRow, best: BenchRow) -> str:
    if round(row.top1 or 0.0, 2) < round(best.top1 or 0.0, 2):
        return f"meets the limits, lower top-1 ({row.top1:.2f}% vs {best.top1:.2f}%)"
    if (row.p50_ms or 0.0) > (best.p50_ms or 0.0):
        return f"same top-1, slower ({row.p50_ms:.3f} ms vs {best.p50_ms:.3f} ms)"
    return "same top-1 and latency, larger file"


def recommend(rows: Sequence[BenchRow], constraints: Constraints | None = None) -> Recommendation:
    """The Pareto front per runtime and the best row meeting `constraints` (see module doc)."""
    constraints = constraints or Constraints()
    usable, batch = candidates(rows)
    rec = Recommendation(batch_size=batch, constraints=constraints,
                         emulated=sum(measured(r) and emulated(r) for r in rows))
    for runtime in dict.fromkeys(r.runtime for r in usable):
        rec.front[runtime] = tolerant_front([r for r in usable if r.runtime == runtime])
    failing = {id(r): constraints.failures(r) for r in usable}
    meeting = sorted((r for r in usable if not failing[id(r)]), key=_rank)
    rec.best = meeting[0] if meeting else None
    for row in sorted(usable, key=_rank):
        if row is rec.best:
            continue
        why = "; ".join(failing[id(row)]) if failing[id(row)] else _why_not(row, rec.best)
        rec.others.append((row, why))
    return rec


def latency_disagreements(rows: Sequence[BenchRow],
                          tolerance: float = LATENCY_TOLERANCE) -> list[str]:
    """Rows that should time the same (same runtime, format, quantization, parameters and MACs at
    batch size 1: one architecture, other weights) but whose p50s differ by more than
    `tolerance`: the machine's noise, not the model, made the difference."""
    groups: dict[tuple, list[BenchRow]] = {}
    for r in rows:
        if r.status == "ok" and r.p50_ms and r.batch_size == 1:
            key = (r.runtime, r.format, r.quantization, r.params, r.macs)
            groups.setdefault(key, []).append(r)
    lines = []
    for (runtime, *_), group in groups.items():
        fast = min(group, key=lambda r: r.p50_ms or 0.0)
        slow = max(group, key=lambda r: r.p50_ms or 0.0)
        if len(group) > 1 and not same_latency(fast.p50_ms or 0.0, slow.p50_ms or 0.0, tolerance):
            lines.append(f"{slow.name} and {fast.name} are the same architecture in {runtime} "
                         f"but their batch-1 p50s differ by "
                         f"{(slow.p50_ms or 0.0) / (fast.p50_ms or 1.0) - 1:.0%} "
                         f"({slow.p50_ms:.3f} vs {fast.p50_ms:.3f} ms): the machine was busy "
                         "during one of them; rerun the bench before comparing their latency")
    return lines


def _describe(row: BenchRow) -> str:
    size = f", {(row.size_bytes or 0) / MIB:.2f} MiB" if row.size_bytes is not None else ""
    noisy = " (noisy timing)" if row.noisy else ""
    return (f"`{row.name}` in {row.runtime} ({row.quantization}): top-1 {row.top1:.2f}%, "
            f"p50 {row.p50_ms:.3f} ms{noisy}{size}")


def markdown(rec: Recommendation) -> list[str]:
    """The recommendation as Markdown lines (a `## Recommendation` section)."""
    lines = ["## Recommendation", ""]
    if rec.batch_size is None and rec.emulated:
        return [*lines, f"Nothing to recommend: the {rec.emulated} measured "
                f"row{'s' if rec.emulated != 1 else ''} ran under an emulator (qemu), whose "
                "latency says nothing about the real device; they show that the artifacts "
                "load and agree there. Bench on the device itself to choose."]
    if rec.batch_size is None:
        return [*lines, "Nothing to recommend: no row has both a top-1 and a latency "
                "(accuracy not measured, or nothing ran)."]
    lines += [f"Compared at batch size {rec.batch_size}; p50s within "
              f"{LATENCY_TOLERANCE:.0%} of each other count as equal (the latency protocol's "
              "noise), so the more accurate of two such rows wins.", "",
              "**Pareto-optimal per runtime** (nothing else is both more accurate and faster):",
              ""]
    for runtime, front in rec.front.items():
        lines.append(f"- {runtime}: " + "; ".join(_describe(r) for r in front))
    c = rec.constraints
    limits = ", ".join(text for value, text in (
        (c.min_top1, f"top-1 >= {c.min_top1}%"),
        (c.max_latency_ms, f"p50 <= {c.max_latency_ms} ms"),
        (c.max_size_mb, f"size <= {c.max_size_mb} MiB")) if value is not None)
    lines.append("")
    if rec.best is None:
        lines.append(f"**Nothing meets the limits** ({limits}): relax --min-top1, "
                     "--max-latency-ms or --max-size-mb.")
    elif limits:
        lines.append(f"**Ship {_describe(rec.best)}**: the most accurate that meets {limits}.")
    else:
        lines.append(f"**Most accurate: {_describe(rec.best)}**. No limits given: pass "
                     "--max-latency-ms, --max-size-mb and/or --min-top1 to choose for a device.")
    if rec.others:
        lines += ["", "Why not the others:", ""]
        lines += [f"- `{row.name}` in {row.runtime}: {why}" for row, why in rec.others]
    return lines
