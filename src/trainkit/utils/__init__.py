"""Utilities below every other layer: nested batches and device moves, seeding, model summary, plots, logging sinks."""

from trainkit.utils.batch import batch_size_of, map_tensors, move_to_device
from trainkit.utils.device import resolve_device
from trainkit.utils.dtypes import batch_dtype, to_batch_dtype
from trainkit.utils.seed import get_rng_state, seed_everything, set_rng_state

__all__ = [
    "batch_dtype",
    "batch_size_of",
    "get_rng_state",
    "map_tensors",
    "move_to_device",
    "resolve_device",
    "seed_everything",
    "set_rng_state",
    "to_batch_dtype",
]
