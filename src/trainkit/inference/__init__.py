"""Inference at full resolution: sliding windows, test-time augmentation, probabilities and class ids.

Example:
    >>> import torch, trainkit
    >>> model = torch.nn.Conv2d(3, 2, kernel_size=1).eval()
    >>> forward = trainkit.inference.TTA(trainkit.inference.SlidingWindow(model, window=64, blend="gaussian"))
    >>> trainkit.inference.to_class_ids(forward(torch.rand(1, 3, 200, 150))).shape
    torch.Size([1, 200, 150])
"""

from trainkit.inference.probabilities import ACTIVATIONS, to_class_ids, to_probabilities
from trainkit.inference.sliding_window import BLENDS, PADDING_MODES, SlidingWindow, blend_weights, sliding_window
from trainkit.inference.tta import FLIPS, TTA, tta

__all__ = [
    "ACTIVATIONS",
    "BLENDS",
    "FLIPS",
    "PADDING_MODES",
    "TTA",
    "SlidingWindow",
    "blend_weights",
    "sliding_window",
    "to_class_ids",
    "to_probabilities",
    "tta",
]
