"""Method names with `+`: `kd+rkd` adds the plans of `kd` and `rkd` into one objective.

The terms of all members are summed with their own weights. The label cross-entropy appears once,
at the smallest weight a member gives it: `kd+rkd` is (1 - alpha) CE + alpha KD + 25 RKD-D +
50 RKD-A, the KD objective with the relational terms added. Stages (FitNets' hint training) run in
the order the members are named. Two members contributing a term or stage of the same name is an
error (`fitnets+kd` would count KD twice: `fitnets` already ends with KD).
"""

from __future__ import annotations

from typing import Any

from kdpipe.config import to_dict
from kdpipe.errors import KdpipeError
from kdpipe.train.methods.base import METHODS, Method, MethodContext, Plan


def resolve(name: str) -> list[Method]:
    """The registered methods of `a+b+...`; an unknown member is an error listing the known."""
    parts = [p.strip() for p in name.split("+")]
    if not all(parts):
        raise KdpipeError(f"method {name!r}: empty member; write methods as kd, rkd or kd+rkd")
    if len(set(parts)) != len(parts):
        raise KdpipeError(f"method {name!r} names a member twice")
    return [METHODS.get(p) for p in parts]


def needs_teacher(name: str) -> bool:
    return any(m.needs_teacher for m in resolve(name))


def reads(name: str) -> tuple[str, ...]:
    """The config fields the method (all members) depends on, in first-seen order."""
    return tuple(dict.fromkeys(f for m in resolve(name) for f in m.reads))


def label(name: str, config: Any) -> str:
    """The human name of `name` under `config`, e.g. "Mimicking middle layer"."""
    values = to_dict(config)
    return " + ".join(m.label.format(**values) for m in resolve(name))


def combine(plans: list[Plan]) -> Plan:
    """One plan from several; see the module docstring."""
    terms = [t for p in plans for t in p.terms]
    stages = [s for p in plans for s in p.stages]
    for kind, names in (("loss term", [t.name for t in terms]),
                        ("stage", [s.name for s in stages])):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise KdpipeError(f"the combined methods both contribute the {kind}(s) {twice}")
    ce_weight = min((p.ce_weight for p in plans), default=1.0)
    return Plan(terms=terms, ce_weight=ce_weight, stages=stages)


def build_plan(name: str, ctx: MethodContext) -> Plan:
    """The plan of method `name` (possibly `a+b`) for the student and teacher in `ctx`."""
    return combine([m.build(ctx) for m in resolve(name)])
