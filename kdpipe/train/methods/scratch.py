"""`scratch`: the baseline every method is compared with, cross-entropy only, no teacher; in a
sweep it runs on the same schedule, data order and initialization as the distilled students."""

from __future__ import annotations

from kdpipe.train.methods.base import MethodContext, Plan, register_method


@register_method("scratch", label="Student from scratch", needs_teacher=False)
def scratch(ctx: MethodContext) -> Plan:
    """The baseline: cross-entropy only, no teacher."""
    return Plan()
