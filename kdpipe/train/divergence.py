"""Signs that a run is diverging, read off the per-epoch metrics rows, with the likely fix.

A non-finite loss already stops the trainer mid-step (`Trainer._step`); these catch the slower
failures that still produce numbers: a training loss that grows instead of falling, and a test
loss far above the training loss (BatchNorm's running statistics no longer describe the data).
"""

from __future__ import annotations

from typing import Any

EXPLODE_RATIO = 10.0  # train loss above 10x the first epoch's: the optimiser overshoots
TEST_TRAIN_RATIO = 10.0  # test loss above 10x train loss: eval-mode BatchNorm is off


def divergence_warnings(history: list[dict[str, Any]],
                        compare_test: bool = True) -> dict[str, str]:
    """kind -> message for the latest row of `history` (the metrics rows so far). `compare_test`
    is False where the training loss is not the test loss's kind (FitNets' hint MSE)."""
    if not history:
        return {}
    first, last = history[0]["train_loss"], history[-1]
    epoch, loss = last["epoch"], last["train_loss"]
    found = {}
    if len(history) > 1 and first > 0 and loss > EXPLODE_RATIO * first:
        found["train_loss_exploded"] = (
            f"epoch {epoch}: training loss {loss:.3g} is over {EXPLODE_RATIO:g}x the first "
            f"epoch's ({first:.3g}): the run is diverging; lower --lr (e.g. by half), use more "
            "--warmup-epochs, or a larger --batch-size")
    test = last.get("test_loss")
    if compare_test and test is not None and loss > 0 and test > TEST_TRAIN_RATIO * loss:
        found["test_loss_far_above_train"] = (
            f"epoch {epoch}: test loss {test:.3g} is over {TEST_TRAIN_RATIO:g}x the training loss "
            f"({loss:.3g}): BatchNorm's running statistics likely went wrong; use a larger "
            "--batch-size, a lower --lr, or check the model's BatchNorm layers")
    return found


def run_warnings(history: list[dict[str, Any]], compare_test: bool = True) -> dict[str, str]:
    """Each kind's first warning over the whole run (what summary.json records): computed from
    the rows alone, so a resumed run finds the same ones."""
    found: dict[str, str] = {}
    for n in range(1, len(history) + 1):
        for kind, message in divergence_warnings(history[:n], compare_test).items():
            found.setdefault(kind, message)
    return found
