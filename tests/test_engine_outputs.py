"""The output rule: dict and tuple outputs through the default step, the metrics, evaluate and predict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import trainkit
from trainkit.losses import AuxLoss, DiceCELoss
from trainkit.metrics import MeanIoU
from trainkit.utils.outputs import aux_outputs, main_output

IMAGES = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
MASKS = torch.randint(0, 3, (4, 32, 32), generator=torch.Generator().manual_seed(1))


class TwoHeads(nn.Module):
    """``{"out": full-size logits, "aux": logits}``, or a deep-supervision list with a half-size map."""

    def __init__(self, kind: str = "dict"):
        super().__init__()
        torch.manual_seed(0)
        self.body, self.head, self.aux = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 1), nn.Conv2d(8, 3, 1)
        self.kind = kind

    def forward(self, x):
        features = torch.relu(self.body(x))
        out, aux = self.head(features), self.aux(features)
        if self.kind == "dict":
            return {"out": out, "aux": aux}
        if self.kind == "named":
            return {"seg": out, "edges": aux}
        return [out, nn.functional.avg_pool2d(aux, 2)]  # deep supervision: a coarser map


def _trainer(model: nn.Module, loss_fn, **kwargs) -> trainkit.Trainer:
    return trainkit.Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn, metrics={"miou": MeanIoU(num_classes=3)},
        device="cpu", progress=False, **kwargs,
    )  # fmt: skip


def test_the_rule() -> None:
    a, b = torch.zeros(1), torch.ones(1)
    assert main_output(a) is a and aux_outputs(a) == []
    assert main_output({"aux": b, "out": a}) is a and aux_outputs({"aux": b, "out": a})[0] is b
    assert main_output({"logits": a}) is a and main_output({"only": a}) is a
    assert main_output([a, b]) is a and aux_outputs((a, b))[0] is b
    with pytest.raises(
        TypeError, match=r"keys \['seg', 'edges'\] and none is 'out' or 'logits'.*AuxLoss\(loss, main='seg'\)"
    ):
        main_output({"seg": a, "edges": b})
    with pytest.raises(KeyError, match=r"no entry 'x' \(named as the main output\); it has \['out'\]"):
        main_output({"out": a}, key="x")
    with pytest.raises(TypeError, match=r"the model returned a str"):
        main_output("logits")


def test_a_dict_model_trains_with_a_builtin_loss_and_its_aux_output_weighted_half() -> None:
    model = TwoHeads()
    ce = nn.CrossEntropyLoss()
    out = model(IMAGES)
    expected = (ce(out["out"], MASKS) + 0.5 * ce(out["aux"], MASKS)).detach()
    trainer = _trainer(model, ce, amp=False)  # fp32, as `expected`
    scores = trainer.evaluate([(IMAGES, MASKS)])
    assert scores["loss"] == pytest.approx(float(expected), rel=1e-6)
    reference = MeanIoU(num_classes=3)
    reference.update(out["out"], MASKS)
    assert scores["miou"] == pytest.approx(float(reference.compute()))  # the metrics saw the main output
    history = trainer.fit([(IMAGES, MASKS)], epochs=2)
    assert history[1]["train/loss"] < history[0]["train/loss"]
    predicted = trainer.predict([IMAGES])
    assert isinstance(predicted[0], torch.Tensor) and predicted[0].shape == (4, 3, 32, 32)
    assert trainkit.evaluate(model, [(IMAGES, MASKS)], ce)["loss"] == pytest.approx(
        trainer.evaluate([(IMAGES, MASKS)])["loss"]
    )


def test_aux_loss_weights_names_and_resizes() -> None:
    named = TwoHeads("named")
    dice_ce = DiceCELoss()
    loss = AuxLoss(dice_ce, aux_weight=0.4, main="seg")
    with torch.no_grad():  # the losses' values only: float() of a tensor that requires grad warns
        out = named(IMAGES)
    assert float(loss(out, MASKS)) == pytest.approx(
        float(dice_ce(out["seg"], MASKS) + 0.4 * dice_ce(out["edges"], MASKS))
    )
    trainer = _trainer(named, loss)
    assert trainer.predict([IMAGES])[0].shape == (4, 3, 32, 32)  # "seg", named once, for predict too
    assert set(trainer.evaluate([(IMAGES, MASKS)])) == {"loss", "miou"}
    deep = TwoHeads("list")
    with torch.no_grad():
        out = deep(IMAGES)
    resized = nn.functional.interpolate(out[1], size=(32, 32), mode="bilinear", align_corners=False)
    assert float(AuxLoss(dice_ce)(out, MASKS)) == pytest.approx(
        float(dice_ce(out[0], MASKS) + 0.5 * dice_ce(resized, MASKS))
    )
    assert float(AuxLoss(dice_ce, aux_weight=0)(out, MASKS)) == pytest.approx(float(dice_ce(out[0], MASKS)))
    with pytest.raises(ValueError, match=r"`aux_weight` must be a finite number >= 0, got -1"):
        AuxLoss(dice_ce, aux_weight=-1)
    assert AuxLoss(dice_ce).expects_class_indices and not AuxLoss(DiceCELoss("binary")).expects_class_indices


@pytest.mark.slow
def test_torchvision_lraspp_trains_with_dice_ce_and_miou_without_glue() -> None:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    torch.manual_seed(0)
    model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)
    trainer = _trainer(model, DiceCELoss())
    history = trainer.fit([(IMAGES, MASKS)], [(IMAGES, MASKS)], epochs=1)
    assert {"train/loss", "train/miou", "val/loss", "val/miou"} <= set(history[0])
    assert trainer.predict([IMAGES])[0].shape == (4, 3, 32, 32)


def test_a_metric_updated_with_a_models_dict_output_reads_its_main_output() -> None:
    out = TwoHeads()(IMAGES)
    direct, by_rule = MeanIoU(num_classes=3), MeanIoU(num_classes=3)
    direct.update(out["out"], MASKS)
    by_rule.update(out, MASKS)
    assert float(by_rule.compute()) == float(direct.compute())
