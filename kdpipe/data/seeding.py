"""Seeds derived from (seed, epoch, stream, ...) so every random choice is a pure function of them.

Each consumer (shuffle order, augmentation, each split) draws from its own stream, so changing one
option (say `limit_train`) never changes the random choices of another (the validation split).
"""

from __future__ import annotations

import numpy as np
import torch

# Stream ids: one per independent random choice in the data room.
ORDER, AUGMENT, VAL_SPLIT, TRAIN_SUBSET, TEST_SUBSET = range(5)


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from any integers (negative ones included)."""
    entropy = [k % 2**64 for k in keys]  # SeedSequence takes non-negative integers only
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


def generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from `keys`: the same keys give the same numbers on every device."""
    return torch.Generator().manual_seed(derive_seed(*keys))
