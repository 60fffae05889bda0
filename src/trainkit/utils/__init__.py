"""Utilities below every other layer: device moves, seeding, model summary, plots, logging sinks."""

from trainkit.utils.device import move_to_device, resolve_device
from trainkit.utils.seed import get_rng_state, seed_everything, set_rng_state

__all__ = ["get_rng_state", "move_to_device", "resolve_device", "seed_everything", "set_rng_state"]
