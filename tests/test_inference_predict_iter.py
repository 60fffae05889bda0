"""Streaming prediction: ``predict_iter`` yields each batch's output as it is computed and keeps none of them, so
memory stays flat over a long loader; ``predict`` is its list. Checked with weak references, never with timings."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

import trainkit
from trainkit.data import ImageDataset, collate
from trainkit.engine.loops import predict, predict_iter
from trainkit.inference import SlidingWindow, to_class_ids

BATCHES = 2000


def _loader(n: int, consumed: list[int] | None = None) -> Iterator[torch.Tensor]:
    for i in range(n):
        if consumed is not None:
            consumed.append(i)
        yield torch.full((2, 4), float(i))


def test_predict_is_the_list_of_predict_iter() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    batches = [torch.randn(5, 4) for _ in range(3)]
    streamed = list(predict_iter(model, batches))
    listed = predict(model, batches)
    assert len(listed) == 3
    for a, b in zip(streamed, listed, strict=True):
        torch.testing.assert_close(a, b)


def test_batches_are_read_only_as_outputs_are_asked_for() -> None:
    consumed: list[int] = []
    outputs = predict_iter(nn.Linear(4, 2), _loader(10, consumed))
    assert consumed == []  # a generator: nothing runs before the first output is asked for
    next(outputs)
    next(outputs)
    assert consumed == [0, 1]


def test_memory_stays_flat_no_output_or_input_outlives_its_batch() -> None:
    model = nn.Linear(4, 2)
    inputs: list[weakref.ref[torch.Tensor]] = []

    def loader() -> Iterator[torch.Tensor]:
        for batch in _loader(BATCHES):
            inputs.append(weakref.ref(batch))
            yield batch

    previous: weakref.ref[torch.Tensor] | None = None
    alive_before_each = []
    gc.collect()
    for out in predict_iter(model, loader()):
        assert out.device.type == "cpu" and not out.requires_grad
        if previous is not None:
            alive_before_each.append(previous() is not None)
        previous = weakref.ref(out)
        del out
    gc.collect()
    assert len(alive_before_each) == BATCHES - 1
    assert not any(alive_before_each)  # the previous output was freed as soon as the caller dropped it
    assert sum(ref() is not None for ref in inputs) == 0


def test_eval_mode_while_streaming_then_the_previous_mode_also_when_closed_early() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    modes = []
    outputs = predict_iter(model, _loader(5))
    for _ in outputs:
        modes.append(model.training)
        assert not torch.is_inference_mode_enabled()  # the caller's code between batches runs as usual
    assert modes == [False] * 5 and model.training
    outputs = predict_iter(model, _loader(5))
    next(outputs)
    assert not model.training
    outputs.close()  # a `break` out of the loop
    assert model.training


def test_main_output_then_postprocess_on_the_device() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 1)

    class Torchvisionish(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = conv

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"out": self.conv(x), "aux": x}

    images = torch.rand(2, 3, 8, 8)
    seen = []

    def ids(logits: torch.Tensor) -> torch.Tensor:
        seen.append(logits.shape)
        return to_class_ids(logits)

    (out,) = predict_iter(Torchvisionish(), [(images, ["a.png", "b.png"])], postprocess=ids)
    assert seen == [torch.Size([2, 4, 8, 8])]
    assert out.dtype == torch.int64
    torch.testing.assert_close(out, conv(images).argmax(1))


def test_trainer_predict_iter_streams_with_the_trainers_settings() -> None:
    model = nn.Linear(4, 3)
    trainer = trainkit.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), device="cpu", progress=False)
    outputs = trainer.predict_iter(_loader(3), postprocess=lambda y: y.argmax(1))
    assert [o.tolist() for o in outputs] == [model(torch.full((2, 4), float(i))).argmax(1).tolist() for i in range(3)]
    assert [o.shape for o in trainer.predict(_loader(2))] == [torch.Size([2, 3])] * 2


def test_an_unlabelled_folder_predicted_by_sliding_windows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sizes = {"img10.png": (40, 70), "img2.png": (33, 20), "img1.jpg": (50, 50)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
    torch.manual_seed(0)
    model = nn.Conv2d(3, 2, 3, padding=1).eval()
    dataset = ImageDataset(tmp_path)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=collate)  # sizes differ: one a batch
    tiled = SlidingWindow(model, window=32, overlap=8, margin=1, transform=lambda x: x.float() / 255)
    masks = list(predict_iter(tiled, loader, postprocess=to_class_ids))
    assert [p.name for p in dataset.files] == ["img1.jpg", "img2.png", "img10.png"]
    assert [tuple(m.shape) for m in masks] == [(1, 50, 50), (1, 33, 20), (1, 40, 70)]
    image, _ = dataset[2]
    with torch.no_grad():
        torch.testing.assert_close(masks[2][0], model(image[None].float() / 255).argmax(1)[0])
