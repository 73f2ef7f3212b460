"""Shared names of the pbrl-compare modules."""

from __future__ import annotations

from typing import Callable

import jax

Array = jax.Array
RewardFunc = Callable[..., list[float]]

# Parity is asserted at this relative error (fp32 on both sides).
PARITY_RTOL = 1e-4
