"""``FreezeEncoder``: train only the decoder and heads for the first epochs, then the whole model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from trainkit.engine.callbacks.base import Callback

if TYPE_CHECKING:
    from trainkit.engine.trainer import Trainer

__all__ = ["FreezeEncoder"]


class FreezeEncoder(Callback):
    """Freeze the model's encoder for epochs ``1..epochs``, unfreeze it from epoch ``epochs + 1`` on.

    The usual first stage of fine-tuning a pretrained encoder: the new decoder and heads learn from a
    fixed encoder before their random gradients reach it. The encoder is found by
    :func:`trainkit.models.find_encoder` (smp's ``.encoder``, torchvision's ``.backbone``) or given. The state
    follows from the epoch number alone, so a resumed run freezes exactly as the uninterrupted one did.
    ``fit`` leaves the encoder trainable when it ends. Build the optimizer on all parameters (frozen ones
    get no gradient, so it leaves them alone): ``trainkit.models.param_groups`` does.

    Under ``torchrun``, pass ``ddp_kwargs={"find_unused_parameters": True}`` to the ``Trainer``: DDP expects a
    gradient for every parameter that required one when the model was wrapped.

    Args:
        epochs: how many epochs (from the first) the encoder stays frozen; 0 never freezes it.
        encoder: the module to freeze, when ``find_encoder`` does not find it.

    Raises:
        ValueError: ``epochs`` is not an int >= 0.

    Example:
        >>> from trainkit.models import create_model
        >>> model = create_model("unet", num_classes=2, base_channels=4, depth=2)
        >>> freeze = FreezeEncoder(epochs=2)
        >>> class FakeTrainer:  # what the callback reads of a Trainer
        ...     module = model
        >>> freeze.on_epoch_start(FakeTrainer(), 1)
        >>> any(p.requires_grad for p in model.encoder.parameters())
        False
        >>> freeze.on_epoch_start(FakeTrainer(), 3)
        >>> all(p.requires_grad for p in model.encoder.parameters())
        True
    """

    def __init__(self, epochs: int, *, encoder: nn.Module | None = None) -> None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"`epochs` must be an int >= 0 (the epochs the encoder stays frozen), got {epochs!r}")
        self.epochs = epochs
        self.encoder = encoder

    def on_fit_start(self, trainer: Trainer) -> None:
        """Set the encoder for the epoch ``fit`` starts (or resumes, maybe mid-epoch) in.

        Example:
            >>> FreezeEncoder(epochs=3).epochs
            3
        """
        self.on_epoch_start(trainer, trainer.state.epoch + 1)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Freeze the encoder for ``epoch <= epochs``, unfreeze it after.

        Example:
            >>> FreezeEncoder(epochs=0).epochs
            0
        """
        from trainkit.models import set_encoder_trainable

        set_encoder_trainable(trainer.module, epoch > self.epochs, encoder=self.encoder)

    def on_fit_end(self, trainer: Trainer) -> None:
        """Leave the encoder trainable, as it was before ``fit``.

        Example:
            >>> FreezeEncoder(epochs=1).on_fit_end  # doctest: +ELLIPSIS
            <bound method FreezeEncoder.on_fit_end of ...>
        """
        from trainkit.models import set_encoder_trainable

        set_encoder_trainable(trainer.module, True, encoder=self.encoder)

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        """Leave the encoder trainable when ``fit`` stops on an error too.

        Example:
            >>> FreezeEncoder(epochs=1).epochs
            1
        """
        self.on_fit_end(trainer)
