"""Deprecated: the sweep is an orchestrator and lives in `kdpipe.sweep`; this alias keeps
`from kdpipe.train.sweep import run_sweep` working."""

from kdpipe.sweep import Cell, SweepFile, expand, read_sweep, run_sweep

__all__ = ["Cell", "SweepFile", "expand", "read_sweep", "run_sweep"]
