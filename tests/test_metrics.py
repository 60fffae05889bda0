"""Tests for trainkit.metrics: values vs torchmetrics and hand counts, input contract, errors, no host sync, state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassJaccardIndex,
)

from trainkit.metrics import Accuracy, ConfusionMatrix, Dice, MeanIoU, Metric, PixelAccuracy


def _batches(
    num_classes: int = 4, n: int = 4, seed: int = 0, ignore: int = 255
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random logits and targets (a stripe of ignored pixels, the last class never in the target)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        logits = torch.randn(2, num_classes, 8, 8, generator=g)
        target = torch.randint(0, num_classes - 1, (2, 8, 8), generator=g)
        target[:, :2][torch.rand(2, 2, 8, generator=g) < 0.5] = ignore
        out.append((logits, target))
    return out


def _np_confmat(preds: np.ndarray, target: np.ndarray, c: int, ignore: int | None) -> np.ndarray:
    keep = np.ones_like(target, dtype=bool) if ignore is None else target != ignore
    matrix = np.zeros((c, c), dtype=np.int64)
    np.add.at(matrix, (target[keep], preds[keep]), 1)
    return matrix


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (MeanIoU, lambda c: MulticlassJaccardIndex(c, average="macro", ignore_index=255)),
        (Dice, lambda c: MulticlassF1Score(c, average="macro", ignore_index=255)),
        (PixelAccuracy, lambda c: MulticlassAccuracy(c, average="micro", ignore_index=255)),
        (ConfusionMatrix, lambda c: MulticlassConfusionMatrix(c, ignore_index=255)),
    ],
)
def test_matches_torchmetrics_over_batches_with_ignore_index(ours, theirs) -> None:
    metric, reference = ours(num_classes=4), theirs(4)
    for logits, target in _batches():
        metric.update(logits, target)
        reference.update(logits, target)
    expected = reference.compute()
    got = metric.compute()
    if ours is ConfusionMatrix:
        assert got.dtype == torch.int64
        assert torch.equal(got, expected.long())
    else:
        assert got.shape == () and got.dtype == torch.float32
        assert got.item() == pytest.approx(expected.item(), abs=1e-6)
        assert 0.0 < got.item() < 1.0


def test_per_class_matches_torchmetrics_and_absent_class_is_nan() -> None:
    metric, reference = MeanIoU(num_classes=5), MulticlassJaccardIndex(5, average="none", ignore_index=255)
    for logits, target in _batches(num_classes=5):
        labels = logits[:, :4].argmax(1)  # class 4 is never predicted nor in the target
        metric.update(labels, target)
        reference.update(labels, target)
    per_class = metric.per_class()
    assert per_class.shape == (5,)
    assert torch.isnan(per_class[4])
    torch.testing.assert_close(per_class[:4], reference.compute()[:4].float())
    assert metric.compute().item() == pytest.approx(per_class[:4].mean().item())


def test_hand_counts_on_small_example() -> None:
    rng = np.random.default_rng(3)
    preds = rng.integers(0, 3, size=(2, 5, 5))
    target = rng.integers(0, 3, size=(2, 5, 5))
    target[0, 0, :3] = 255
    matrix = _np_confmat(preds, target, 3, 255)
    tp, fp, fn = np.diag(matrix), matrix.sum(0) - np.diag(matrix), matrix.sum(1) - np.diag(matrix)
    metrics = {c(num_classes=3) for c in (ConfusionMatrix, MeanIoU, Dice, PixelAccuracy)}
    for m in metrics:
        m.update(torch.from_numpy(preds[:1]), torch.from_numpy(target[:1]))
        m.update(torch.from_numpy(preds[1:]), torch.from_numpy(target[1:]))
    by_name = {type(m).__name__: m for m in metrics}
    assert by_name["ConfusionMatrix"].compute().tolist() == matrix.tolist()
    assert by_name["MeanIoU"].compute().item() == pytest.approx(np.mean(tp / (tp + fp + fn)), abs=1e-6)
    assert by_name["Dice"].compute().item() == pytest.approx(np.mean(2 * tp / (2 * tp + fp + fn)), abs=1e-6)
    assert by_name["PixelAccuracy"].compute().item() == pytest.approx(tp.sum() / matrix.sum(), abs=1e-6)
    np.testing.assert_allclose(by_name["PixelAccuracy"].per_class().numpy(), tp / (tp + fn), rtol=1e-6)
    np.testing.assert_allclose(by_name["Dice"].per_class().numpy(), 2 * tp / (2 * tp + fp + fn), rtol=1e-6)


def test_documented_absent_class_example() -> None:
    metric = MeanIoU(num_classes=3)
    metric.update(torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 0, 0]))
    assert metric.compute().item() == pytest.approx((2 / 3 + 1 / 2) / 2, abs=1e-6)  # 0.5833, torchmetrics macro
    per_class = metric.per_class()
    assert per_class[:2].tolist() == pytest.approx([2 / 3, 1 / 2])
    assert math.isnan(per_class[2].item())
    reference = MulticlassJaccardIndex(3, average="macro")(torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 0, 0]))
    assert metric.compute().item() == pytest.approx(reference.item(), abs=1e-6)


def test_epoch_value_is_exact_not_a_mean_of_batch_means() -> None:
    metric = PixelAccuracy(num_classes=2)
    metric.update(torch.tensor([1]), torch.tensor([1]))  # batch accuracy 1.0 on 1 pixel
    metric.update(torch.tensor([0, 0, 0]), torch.tensor([1, 1, 1]))  # batch accuracy 0.0 on 3 pixels
    assert metric.compute().item() == pytest.approx(0.25)  # not (1.0 + 0.0) / 2


def test_logits_and_labels_give_the_same_result() -> None:
    from_logits, from_labels = MeanIoU(num_classes=4), MeanIoU(num_classes=4)
    for logits, target in _batches(seed=5):
        from_logits.update(logits, target)
        from_labels.update(logits.argmax(1), target.to(torch.uint8))
    assert torch.equal(from_logits.confusion_matrix(), from_labels.confusion_matrix())
    assert from_logits.compute().item() == from_labels.compute().item()


def test_binary_single_channel_logits_threshold_at_zero() -> None:
    logits = torch.tensor([[[[-2.0, 0.5], [3.0, -0.1]]]])  # [1, 1, 2, 2]
    target = torch.tensor([[[0, 1], [0, 0]]])
    for preds in (logits, logits[:, 0]):  # [N, 1, H, W] and float [N, H, W]
        metric = ConfusionMatrix(num_classes=2)
        metric.update(preds, target)
        assert metric.compute().tolist() == [[2, 1], [0, 1]]
    probabilities = ConfusionMatrix(num_classes=2, threshold=0.5)
    probabilities.update(torch.tensor([[0.2, 0.7]]), torch.tensor([[0, 1]]))
    assert probabilities.compute().tolist() == [[1, 0], [0, 1]]


def test_ignore_index_none_counts_all_and_in_range_ignore_matches_torchmetrics() -> None:
    preds, target = torch.tensor([0, 1, 2, 2, 1]), torch.tensor([0, 1, 2, 0, 0])
    everything = ConfusionMatrix(num_classes=3, ignore_index=None)
    everything.update(preds, target)
    assert everything.compute().sum().item() == 5
    background = MeanIoU(num_classes=3, ignore_index=0)
    background.update(preds, target)
    reference = MulticlassJaccardIndex(3, average="macro", ignore_index=0)(preds, target)
    assert math.isnan(background.per_class()[0].item())
    assert background.compute().item() == pytest.approx(reference.item(), abs=1e-6)
    assert background.compute().item() == pytest.approx(1.0)


def test_accuracy_top_k_matches_torchmetrics() -> None:
    g = torch.Generator().manual_seed(1)
    ours, theirs = Accuracy(num_classes=5, top_k=2), MulticlassAccuracy(5, top_k=2, average="micro")
    top1 = Accuracy()
    for _ in range(3):
        logits, target = torch.randn(16, 5, generator=g), torch.randint(0, 5, (16,), generator=g)
        ours.update(logits, target)
        theirs.update(logits, target)
        top1.update(logits, target)
    assert ours.compute().item() == pytest.approx(theirs.compute().item(), abs=1e-6)
    assert top1.compute().item() < ours.compute().item()


def test_accuracy_binary_logits_labels_and_ignore_index() -> None:
    metric = Accuracy()
    metric.update(torch.tensor([2.0, -1.0, 0.3, -0.2]), torch.tensor([1, 0, 0, 0]))  # 3 of 4 right
    metric.update(torch.tensor([[1.5], [-3.0]]), torch.tensor([1, 1]))  # [N, 1] logits, 1 of 2 right
    assert metric.compute().item() == pytest.approx(4 / 6)
    ignoring = Accuracy(num_classes=3, ignore_index=-100)
    ignoring.update(torch.tensor([0, 2, 1]), torch.tensor([0, -100, 2]))
    assert ignoring.compute().item() == pytest.approx(0.5)


def _labelled_batches(n: int, num_classes: int = 5, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Classification logits and targets of varying batch size (the training loop's case)."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 9, (n,), generator=g).tolist()
    return [(torch.randn(k, num_classes, generator=g), torch.randint(0, num_classes, (k,), generator=g)) for k in sizes]


def test_accuracy_matches_torchmetrics_across_count_groups_and_large_batches() -> None:
    # 600 small batches are counted 256 at a time (two groups and a rest); a 2x64x64 batch is counted with
    # those kept before it, and 2x256x256 (more ids than a group holds) at once.
    ours, theirs = Accuracy(num_classes=5), MulticlassAccuracy(5, average="micro")
    batches = _labelled_batches(600)
    g = torch.Generator().manual_seed(1)
    batches.insert(70, (torch.randn(2, 5, 64, 64, generator=g), torch.randint(0, 5, (2, 64, 64), generator=g)))
    batches.insert(300, (torch.randn(2, 5, 256, 256, generator=g), torch.randint(0, 5, (2, 256, 256), generator=g)))
    for logits, target in batches:
        ours.update(logits, target)
        theirs.update(logits, target)
    assert ours.compute().item() == pytest.approx(theirs.compute().item(), abs=1e-7)
    state = ours.state_dict()
    assert state["total"].item() == sum(t.numel() for _, t in batches)
    assert (state["target_min"].item(), state["target_max"].item()) == (0, 4)


def test_accuracy_ids_waiting_to_be_counted_reach_every_reader() -> None:
    batches = _labelled_batches(10, seed=3)  # fewer than a group: none of them is counted yet
    whole, first, second = Accuracy(num_classes=5), Accuracy(num_classes=5), Accuracy(num_classes=5)
    for i, (logits, target) in enumerate(batches):
        whole.update(logits, target)
        (first if i < 6 else second).update(logits, target)
    expected = sum((logits.argmax(1) == target).sum().item() for logits, target in batches) / sum(
        t.numel() for _, t in batches
    )
    assert whole.state_dict()["correct"].item() / whole.state_dict()["total"].item() == pytest.approx(expected)
    restored = Accuracy(num_classes=5)
    restored.load_state_dict(first.state_dict())
    assert restored.merge_(second).compute().item() == pytest.approx(expected)
    assert first.merge_(second).compute().item() == pytest.approx(expected)
    assert whole.to("cpu").compute().item() == pytest.approx(expected)
    whole.update(*batches[0])
    whole.reset()  # drops the kept ids too
    whole.update(torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]]), torch.tensor([1]))
    assert whole.compute().item() == 1.0
    whole.update(torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]]), torch.tensor([1]))
    whole.load_state_dict(Accuracy(num_classes=5).state_dict())  # replaces the counts, kept ids included
    assert math.isnan(whole.compute().item())


def test_accuracy_keeps_its_own_copy_of_a_target_the_caller_reuses() -> None:
    metric = Accuracy(num_classes=3)
    target = torch.tensor([0, 1, 2])
    metric.update(torch.eye(3) * 5, target)  # three hits, not counted yet
    target.fill_(9)  # a caller that refills one target buffer every step
    metric.update(torch.eye(3) * 5, target.fill_(2))
    assert metric.compute().item() == pytest.approx(4 / 6)


def test_accuracy_reports_ids_out_of_range_with_the_values() -> None:
    metric = Accuracy(num_classes=3)
    metric.update(torch.randn(4, 3), torch.tensor([0, 1, 5, 2]))
    metric.update(torch.randn(2, 3), torch.tensor([-100, 1]))  # CrossEntropyLoss's default ignore_index
    with pytest.raises(
        ValueError,
        match=r"2 element\(s\) since the last `reset\(\)` had class ids outside \[0, 3\): target id -100 \(smallest "
        r"seen\), target id 5 \(largest seen\); `num_classes=3`, `ignore_index=None`",
    ):
        metric.compute()


def test_compute_before_update_is_nan_and_confusion_matrix_is_zero() -> None:
    assert math.isnan(MeanIoU(num_classes=2).compute().item())
    assert math.isnan(Dice(num_classes=2).compute().item())
    assert math.isnan(Accuracy().compute().item())
    assert ConfusionMatrix(num_classes=2).compute().tolist() == [[0, 0], [0, 0]]


def test_empty_batch_changes_nothing() -> None:
    metric = ConfusionMatrix(num_classes=2)
    metric.update(torch.zeros(0, 2, 4, 4), torch.zeros(0, 4, 4, dtype=torch.long))
    assert metric.compute().sum().item() == 0


# ----------------------------------------------------------------------------- device and host sync


_CONFIGURATIONS = [
    lambda: Accuracy(),
    lambda: Accuracy(num_classes=4),
    lambda: Accuracy(num_classes=4, top_k=2, ignore_index=255),
    lambda: Accuracy(ignore_index=0),
    lambda: MeanIoU(num_classes=4),
    lambda: MeanIoU(num_classes=4, ignore_index=None),
    lambda: Dice(num_classes=4, ignore_index=0),
    lambda: PixelAccuracy(num_classes=4),
    lambda: ConfusionMatrix(num_classes=4, threshold=0.5),
]


@pytest.mark.parametrize("make", _CONFIGURATIONS)
def test_update_never_reads_values_on_the_host(make, monkeypatch: pytest.MonkeyPatch) -> None:
    metric = make()
    batches = [(logits, target.clamp(max=3)) for logits, target in _batches()]
    metric.update(*batches[0])  # the first update creates the state

    def no_sync(*args, **kwargs):
        raise AssertionError("update read a tensor value on the host")

    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, no_sync)
    for logits, target in batches[1:] * 100:  # 300 updates: one group of kept ids is counted inside `update`
        metric.update(logits, target)
    monkeypatch.undo()
    assert all(t.device == torch.device("cpu") for t in metric.state_dict().values())
    value = metric.compute()
    assert torch.isfinite(value).all() and value.sum() > 0


class _RecordOps(TorchDispatchMode):
    """Record the name of every ATen operation that runs a kernel (views do not) inside the ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("make", _CONFIGURATIONS)
def test_update_runs_the_same_two_kernels_whatever_the_arguments(make) -> None:
    # One path: an update turns logits into ids and keeps a copy of them; ignore_index, the range
    # checks and the counting run once for a group of updates, whatever the constructor arguments.
    metric = make()
    logits, target = _batches(n=1)[0]
    metric.update(logits, target)
    with _RecordOps() as recorded:
        metric.update(logits, target)
    assert recorded.ops == (["topk", "cat"] if getattr(metric, "top_k", 1) > 1 else ["max", "stack"])


def test_kept_ids_are_the_metrics_own_copy_for_every_metric() -> None:
    for make in _CONFIGURATIONS:
        metric, reference = make(), make()
        logits, target = _batches(n=1)[0]
        target = target.clamp(max=3)
        metric.update(logits, target)
        reference.update(logits, target.clone())
        target.fill_(1)  # a caller that refills one target buffer every step
        assert metric.compute().tolist() == reference.compute().tolist(), metric


@pytest.mark.parametrize("ignore_index", [255, None, 0])
@pytest.mark.parametrize(("ours", "theirs"), [(MeanIoU, MulticlassJaccardIndex), (Dice, MulticlassF1Score)])
def test_confusion_metrics_match_torchmetrics_across_count_groups_and_large_batches(ours, theirs, ignore_index) -> None:
    metric = ours(num_classes=4, ignore_index=ignore_index)
    matrix = MulticlassConfusionMatrix(4, ignore_index=ignore_index)
    reference = theirs(4, average="macro", ignore_index=ignore_index)
    batches = _batches(n=300, seed=2)  # 300 batches of 128 pixels: counted 256 batches at a time
    g = torch.Generator().manual_seed(4)
    big = torch.randint(0, 4, (2, 256, 300), generator=g)  # more ids than a group holds: counted at once
    batches.insert(100, (torch.randn(2, 4, 256, 300, generator=g), big))
    for logits, target in batches:
        if ignore_index != 255:
            target = target.clamp(max=3)
        for m in (metric, matrix, reference):
            m.update(logits, target)
    assert torch.equal(metric.confusion_matrix(), matrix.compute())
    if ignore_index != 0:  # torchmetrics' F1 averages an ignored real class as 0; trainkit leaves it out
        assert metric.compute().item() == pytest.approx(reference.compute().item(), abs=1e-6)


def test_out_of_range_ids_are_counted_exactly_inside_a_group_of_batches() -> None:
    metric = ConfusionMatrix(num_classes=3)
    metric.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]))
    metric.update(torch.tensor([3, 1, -2]), torch.tensor([0, 255, 1]))  # 255 ignored, two predictions out of range
    metric.update(torch.tensor([2, 2]), torch.tensor([9, 2]))  # one target out of range
    state = metric.state_dict()
    assert state["confmat"].tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 2]]
    assert state["out_of_range"].item() == 3
    with pytest.raises(
        ValueError,
        match=r"3 element\(s\) .* outside \[0, 3\): target id 9 \(largest seen\), predicted id -2 \(smallest seen\), "
        r"predicted id 3 \(largest seen\)",
    ):
        metric.compute()


def test_accuracy_without_num_classes_checks_each_batch_against_its_own_channel_count() -> None:
    metric = Accuracy()
    metric.update(torch.eye(5)[:4] * 3, torch.tensor([0, 1, 2, 4]))  # 5 channels: id 4 is valid, 3 of 4 right
    metric.update(torch.eye(3) * 3, torch.tensor([0, 1, 2]))  # 3 channels: 3 right
    assert metric.compute().item() == pytest.approx(6 / 7)
    metric.update(torch.eye(3)[:1] * 3, torch.tensor([4]))  # 3 channels: id 4 is out of range here
    with pytest.raises(ValueError, match=r"1 element\(s\) .* outside \[0, C\): target ids seen span 0\.\.4"):
        metric.compute()


def test_update_under_inference_mode_keeps_working_outside_it_for_every_metric() -> None:
    for make in _CONFIGURATIONS:
        inside, outside = make(), make()
        batches = [(logits, target.clamp(max=3)) for logits, target in _batches(n=3)]
        with torch.inference_mode():
            inside.update(*batches[0])
        inside.update(*batches[1])
        with torch.inference_mode():
            inside.update(*batches[2])
        for batch in batches:
            outside.update(*batch)
        assert inside.compute().tolist() == outside.compute().tolist(), inside


def test_state_lives_on_the_first_updates_device_and_to_moves_it() -> None:
    metric = ConfusionMatrix(num_classes=2)
    metric.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert metric._state is not None and metric._state["confmat"].device.type == "cpu"
    with pytest.raises(ValueError, match=r"counts live on cpu since the first update.*metric\.to\('meta'\)"):
        metric.update(torch.zeros(2, device="meta", dtype=torch.long), torch.zeros(2, device="meta", dtype=torch.long))
    metric.to("meta")
    assert metric._state["confmat"].device.type == "meta"
    metric.reset()
    metric.update(torch.tensor([1]), torch.tensor([1]))
    assert metric.compute().tolist() == [[0, 0], [0, 1]]


# ----------------------------------------------------------------------------- state


def test_state_made_under_inference_mode_keeps_working_outside_it() -> None:
    metric = Accuracy(num_classes=2)
    with torch.inference_mode():
        metric.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    metric.update(torch.tensor([0, 0]), torch.tensor([1, 1]))
    with torch.inference_mode():
        metric.update(torch.tensor([1]), torch.tensor([1]))
    assert metric.compute().item() == pytest.approx(3 / 5)


def test_state_dict_round_trip_merge_and_reset() -> None:
    batches = _batches(seed=7)
    whole, first, second = MeanIoU(num_classes=4), MeanIoU(num_classes=4), MeanIoU(num_classes=4)
    for i, (logits, target) in enumerate(batches):
        whole.update(logits, target)
        (first if i < 2 else second).update(logits, target)
    restored = MeanIoU(num_classes=4)
    restored.load_state_dict(first.state_dict())
    restored.merge_(second)
    assert torch.equal(restored.confusion_matrix(), whole.confusion_matrix())
    assert restored.compute().item() == whole.compute().item()
    state = whole.state_dict()
    state["confmat"].zero_()  # a copy: the metric keeps its counts
    assert whole.confusion_matrix().sum().item() > 0
    whole.reset()
    assert whole.confusion_matrix().sum().item() == 0


def test_a_copied_metric_keeps_its_own_counts() -> None:
    import copy

    hit, miss = (torch.tensor([[2.0, 0.0]]), torch.tensor([0])), (torch.tensor([[2.0, 0.0]]), torch.tensor([1]))
    for make in (lambda: Accuracy(num_classes=2), lambda: MeanIoU(num_classes=2)):
        a = make()
        b = copy.copy(a)  # before any update
        a.update(*hit)
        b.update(*miss)
        c = copy.copy(a)  # after one (its ids are kept, not counted yet)
        c.update(*miss)
        expected = {}
        for name, batches in {"a": [hit], "b": [miss], "c": [hit, miss]}.items():
            fresh = make()
            for batch in batches:
                fresh.update(*batch)
            expected[name] = fresh.compute().item()
        assert {"a": a.compute().item(), "b": b.compute().item(), "c": c.compute().item()} == expected
        assert expected["a"] != expected["c"]


def test_accuracy_loads_the_state_layout_of_trainkit_0_1_0() -> None:
    old = {
        "correct": torch.tensor(3),
        "total": torch.tensor(4),
        "out_of_range": torch.tensor(0),
        "label_min": torch.tensor([0, 0]),
        "label_max": torch.tensor([2, 1]),
    }
    metric = Accuracy(num_classes=3)
    metric.load_state_dict(old)
    assert metric.compute().item() == 0.75
    assert metric.state_dict()["target_max"].item() == 2 and metric.state_dict()["pred_max"].item() == 1


def test_compute_all_reduces_a_copy_so_repeated_compute_does_not_double(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_all_reduce(tensor: torch.Tensor, op=None) -> None:  # two ranks that saw the same data
        calls.append(op)
        if op == dist.ReduceOp.SUM:
            tensor.mul_(2)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    metric = ConfusionMatrix(num_classes=2)
    metric.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    assert metric.compute().tolist() == [[2, 2], [0, 2]]
    assert metric.compute().tolist() == [[2, 2], [0, 2]]
    assert metric.state_dict()["confmat"].tolist() == [[1, 1], [0, 1]]
    assert calls.count(dist.ReduceOp.SUM) == 4 and calls.count(dist.ReduceOp.MIN) == 2
    local = ConfusionMatrix(num_classes=2, sync_on_compute=False)
    local.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    assert local.compute().tolist() == [[1, 1], [0, 1]]


def _distributed_worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        metric = MeanIoU(num_classes=4)
        if rank == 0:  # rank 1 sees no batch at all and must still join the all-reduce
            for logits, target in _batches(seed=11):
                metric.update(logits, target)
        value = metric.compute()
        torch.save({"value": value, "matrix": metric.confusion_matrix()}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_compute_sums_counts_across_ranks(tmp_path) -> None:
    mp.spawn(_distributed_worker, args=(str(tmp_path / "store"), str(tmp_path / "out")), nprocs=2)
    reference = MeanIoU(num_classes=4)
    for logits, target in _batches(seed=11):
        reference.update(logits, target)
    for rank in (0, 1):
        result = torch.load(tmp_path / f"out.{rank}", weights_only=True)
        assert torch.equal(result["matrix"], reference.confusion_matrix())
        assert result["value"].item() == reference.compute().item()


# ----------------------------------------------------------------------------- errors


def test_shape_errors_name_both_shapes() -> None:
    metric = MeanIoU(num_classes=3)
    with pytest.raises(ValueError, match=r"preds \(2, 4\) do not fit target \(2, 5\)"):
        metric.update(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"logits \(2, 3, 4, 4\) do not fit target \(2, 5, 5\)"):
        metric.update(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"have 4 channels but `num_classes=3`"):
        metric.update(torch.zeros(2, 4, 5, 5), torch.zeros(2, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"single-channel logits \(2, 1, 5, 5\) are binary, but `num_classes=3`"):
        metric.update(torch.zeros(2, 1, 5, 5), torch.zeros(2, 5, 5, dtype=torch.long))


def test_dtype_errors_say_the_fix() -> None:
    metric = MeanIoU(num_classes=3)
    with pytest.raises(TypeError, match=r"target must hold integer class ids; got torch.float32.*`target.long\(\)`"):
        metric.update(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4))
    with pytest.raises(TypeError, match=r"float preds shaped like target .* `num_classes=3`.*`preds.argmax\(1\)`"):
        metric.update(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(TypeError, match=r"single-channel preds must be float logits; got torch.int64"):
        MeanIoU(num_classes=2).update(torch.zeros(2, 1, 4, 4, dtype=torch.long), torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(TypeError, match=r"takes two tensors; got list and Tensor"):
        metric.update([0, 1], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"preds are on meta but target is on cpu"):
        metric.update(torch.zeros(2, device="meta", dtype=torch.long), torch.zeros(2, dtype=torch.long))


def test_out_of_range_ids_are_reported_by_compute_with_the_values() -> None:
    metric = MeanIoU(num_classes=3)
    metric.update(torch.tensor([0, 1, 2, 1]), torch.tensor([0, 1, 7, 255]))  # 255 is ignored, 7 is not
    with pytest.raises(
        ValueError, match=r"1 element\(s\) .* outside \[0, 3\): target id 7 \(largest seen\).*`num_classes=3`"
    ):
        metric.compute()
    predicted = ConfusionMatrix(num_classes=3)
    predicted.update(torch.tensor([-1, 4]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"predicted id -1 \(smallest seen\), predicted id 4 \(largest seen\)"):
        predicted.confusion_matrix()
    unsized = Accuracy()
    unsized.update(torch.randn(3, 4), torch.tensor([0, 9, 1]))
    with pytest.raises(ValueError, match=r"outside \[0, C\): target ids seen span 0\.\.9"):
        unsized.compute()


def test_option_errors() -> None:
    with pytest.raises(ValueError, match=r"`num_classes` must be >= 2; got 1"):
        MeanIoU(num_classes=1)
    with pytest.raises(TypeError, match=r"`num_classes` must be an int; got 2.0"):
        Dice(num_classes=2.0)
    with pytest.raises(TypeError, match=r"`ignore_index` must be an int or None; got '255'"):
        PixelAccuracy(num_classes=2, ignore_index="255")
    with pytest.raises(TypeError, match=r"`threshold` must be a number"):
        ConfusionMatrix(num_classes=2, threshold="0.5")
    with pytest.raises(TypeError, match=r"`sync_on_compute` must be True or False"):
        MeanIoU(num_classes=2, sync_on_compute=1)
    with pytest.raises(ValueError, match=r"`top_k=4` exceeds `num_classes=3`"):
        Accuracy(num_classes=3, top_k=4)
    with pytest.raises(
        ValueError, match=r"`Accuracy\(top_k=2\)` needs logits \[N, C, ...\] with C >= 2; got preds \(3,\)"
    ):
        Accuracy(top_k=2).update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))


def test_state_errors() -> None:
    metric = MeanIoU(num_classes=3)
    with pytest.raises(ValueError, match=r"'confmat' has shape \(2, 2\), expected \(3, 3\)"):
        metric.load_state_dict(MeanIoU(num_classes=2).state_dict())
    with pytest.raises(ValueError, match=r"expected keys \['confmat', 'label_max', 'label_min', 'out_of_range'\]"):
        metric.load_state_dict({"confmat": torch.zeros(3, 3)})
    with pytest.raises(TypeError, match=r"`MeanIoU.merge_` needs another MeanIoU"):
        metric.merge_(Dice(num_classes=3))
    other = MeanIoU(num_classes=4)
    other.update(torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"has other settings"):
        metric.merge_(other)


def test_metric_base_is_the_protocol() -> None:
    for cls in (Accuracy, ConfusionMatrix, Dice, MeanIoU, PixelAccuracy):
        assert issubclass(cls, Metric)
    assert repr(MeanIoU(num_classes=3)) == "MeanIoU(num_classes=3, ignore_index=255)"
    assert repr(Accuracy()) == "Accuracy(num_classes=None, top_k=1, ignore_index=None)"
