"""Probabilities and class ids from logits: softmax/argmax for classes, sigmoid/threshold for one channel."""

from __future__ import annotations

import pytest
import torch

from trainkit.inference import to_class_ids, to_probabilities


def test_softmax_over_classes_and_sigmoid_for_one_channel() -> None:
    logits = torch.randn(2, 4, 5, 6)
    probs = to_probabilities(logits)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 5, 6))
    torch.testing.assert_close(to_probabilities(logits[:, :1]), torch.sigmoid(logits[:, :1]))
    torch.testing.assert_close(to_probabilities(logits, "sigmoid"), torch.sigmoid(logits))  # multi-label maps
    torch.testing.assert_close(to_probabilities(logits[0]), probs[0])  # [K, H, W]
    assert to_probabilities(logits.bfloat16()).dtype == torch.float32


def test_class_ids_are_the_argmax_or_the_thresholded_foreground() -> None:
    logits = torch.randn(2, 4, 5, 6)
    ids = to_class_ids(logits)
    assert ids.dtype == torch.int64 and ids.shape == (2, 5, 6)
    torch.testing.assert_close(ids, to_probabilities(logits).argmax(1))
    binary = torch.tensor([[[[-1.0, 0.1, 2.0]]]])  # sigmoid: 0.27, 0.52, 0.88
    assert to_class_ids(binary).tolist() == [[[0, 1, 1]]]
    assert to_class_ids(binary, threshold=0.6).tolist() == [[[0, 0, 1]]]
    assert to_class_ids(binary[0]).tolist() == [[0, 1, 1]]  # [K, H, W] gives [H, W]


def test_bad_arguments_say_what_is_expected() -> None:
    with pytest.raises(ValueError, match=r"expected logits \[N, K, H, W\] or \[K, H, W\], got \(5, 6\)"):
        to_class_ids(torch.randn(5, 6))
    with pytest.raises(ValueError, match=r"`activation` must be one of \('auto', 'softmax', 'sigmoid'\), got 'relu'"):
        to_probabilities(torch.randn(1, 2, 3, 3), "relu")
    with pytest.raises(ValueError, match=r"`threshold` is a probability in \(0, 1\), got 1.5"):
        to_class_ids(torch.randn(1, 1, 3, 3), threshold=1.5)
