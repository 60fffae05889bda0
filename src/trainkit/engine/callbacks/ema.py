"""``EMA``: an exponential moving average of the model's weights, validated and checkpointed in their place.

After every optimizer step the average moves towards the weights, ``average = decay * average + (1 - decay)
* weights`` (one ``torch._foreach_lerp_`` over every floating tensor of the model's ``state_dict``; integer
buffers such as BatchNorm's ``num_batches_tracked`` are copied), as timm's ``ModelEmaV3`` does. The first
update copies the weights; ``warmup=True`` then raises the decay from 0 towards ``decay`` as
``1 - updates ** -warmup_power``.

Where the two sets of weights live (``validate=True``, the default)::

    epoch start:        trainer.module <- training weights       (the optimizer trains them)
    every step:         average.lerp_(weights, 1 - decay)
    validation start:   trainer.module <- average                 (val/*, best.pt and last.pt see the average)
    after fit:          trainer.module holds the average;         ema.training_weights() the trained weights

A checkpoint written while the module holds the average (``best.pt``, the epoch-end ``last.pt``) keeps the
average as its ``"model"`` and the training weights in this callback's state; one written mid-epoch
(``ModelCheckpoint(every_n_steps=N)``) keeps the training weights as ``"model"`` and the average in this
callback's state. Either way a resume puts both back and continues bitwise as if never interrupted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from trainkit.engine.callbacks.base import Callback

if TYPE_CHECKING:
    from trainkit.engine.loop_state import LoopState
    from trainkit.engine.step import StepOutput
    from trainkit.engine.trainer import Trainer

__all__ = ["EMA"]

_BUFFERS = ("average", "copy")


class EMA(Callback):
    """Keep an exponential moving average (EMA) of the model's weights; validate and checkpoint it.

    The average is updated after every ``every_n_steps``-th optimizer step. With ``validate=True`` the
    model holds the average from the start of validation until the next epoch's training starts, so
    ``val/*`` in the history, ``best.pt`` (and ``last.pt`` at an epoch's end) and ``trainer.module`` after
    ``fit`` are the averaged weights; :meth:`training_weights` returns the weights the optimizer trained.
    With ``validate=False`` the model keeps the trained weights throughout and :meth:`averaged_weights`
    returns the average (timm's way: keep it aside, choose later).

    Args:
        decay: the average's decay per update, in ``[0, 1)``; an average over about ``1 / (1 - decay)``
            updates (``0.999``: the last ~1000 steps).
        warmup: raise the decay from 0 towards ``decay`` as ``1 - u ** -warmup_power`` at update ``u``, so the
            average forgets the random initial weights quickly in short runs (timm's ``use_warmup``).
        warmup_power: the warmup's power: ``2/3`` reaches a decay of 0.999 after 31.6k updates, ``3/4`` after
            10k (timm's advice: 2/3 for runs of a million steps or more, 3/4 for shorter ones).
        every_n_steps: update every N optimizer steps (the decay applies per update).
        buffers: ``"average"`` the floating buffers (BatchNorm's running statistics) like the parameters, as
            timm does by default, or ``"copy"`` them from the model (timm's ``exclude_buffers=True``).
        validate: hold the average in the model for validation, checkpoints and after ``fit`` (see above).

    Attributes:
        step: the optimizer step (``trainer.state.global_step``) of the last update; ``-1`` before the first.

    Example:
        >>> import trainkit
        >>> model = torch.nn.Linear(2, 1)
        >>> ema = EMA(decay=0.5)
        >>> trainer = trainkit.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.MSELoss(),
        ...                            callbacks=[ema], device="cpu", progress=False)
        >>> _ = trainer.fit([(torch.ones(4, 2), torch.zeros(4, 1))] * 3, epochs=1)  # doctest: +ELLIPSIS
        epoch 1/1 ...
        >>> ema.step, ema.decay_at(3)
        (3, 0.5)
        >>> torch.equal(trainer.module.weight, ema.training_weights()["weight"])  # the module holds the average
        False
    """

    # Before the other callbacks: from an epoch's start they see (and may change) the training weights, and at
    # an epoch's end the average; and the average is updated before ModelCheckpoint (order 100) saves a step.
    order = -100

    def __init__(
        self,
        decay: float = 0.999,
        *,
        warmup: bool = False,
        warmup_power: float = 2 / 3,
        every_n_steps: int = 1,
        buffers: str = "average",
        validate: bool = True,
    ):
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
            raise ValueError(
                f"`decay` must be a number in [0, 1), got {decay!r}; e.g. `EMA(decay=0.999)` averages over about "
                "the last 1000 optimizer steps"
            )
        if isinstance(warmup_power, bool) or not isinstance(warmup_power, (int, float)) or not warmup_power > 0:
            raise ValueError(f"`warmup_power` must be a positive number, got {warmup_power!r}; e.g. 2/3 or 3/4")
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"`every_n_steps` must be a positive integer, got {every_n_steps!r}")
        if buffers not in _BUFFERS:
            raise ValueError(f"`buffers` must be 'average' or 'copy', got {buffers!r}")
        self.decay, self.warmup, self.warmup_power = float(decay), bool(warmup), float(warmup_power)
        self.every_n_steps, self.buffers, self.validate = every_n_steps, buffers, bool(validate)
        self.step = -1
        self._names: list[str] = []
        self._model: list[torch.Tensor] = []  # the module's state_dict tensors (aliases of its weights)
        self._average: list[torch.Tensor] | None = None
        self._training: list[torch.Tensor] | None = None  # the training weights while the module holds the average
        self._swapped = False  # the module holds the average
        self._loaded: dict[str, Any] | None = None  # a checkpoint's state, put in place when fit starts
        # ((average, model) tensors to interpolate, (average, model) tensors to copy), set when fit starts
        self._pairs: tuple[tuple[list[torch.Tensor], list[torch.Tensor]], ...] = (([], []), ([], []))

    def decay_at(self, step: int) -> float:
        """The decay of the update made at optimizer step ``step`` (1-based): 0 for the first update.

        Example:
            >>> EMA(0.999).decay_at(1), EMA(0.999).decay_at(2)
            (0.0, 0.999)
            >>> round(EMA(0.999, warmup=True).decay_at(100), 4)  # 1 - 100 ** (-2/3)
            0.9536
        """
        update = step // self.every_n_steps
        if update <= 1:
            return 0.0
        return min(self.decay, 1.0 - update**-self.warmup_power) if self.warmup else self.decay

    # -- hooks ---------------------------------------------------------------------------------

    def on_fit_start(self, trainer: Trainer) -> None:
        """Bind to ``trainer.module``; put the training weights back; start the average afresh or resumed.

        Example:
            >>> import trainkit
            >>> model = torch.nn.Linear(2, 1)
            >>> trainer = trainkit.Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu")
            >>> ema = EMA(); ema.on_fit_start(trainer); ema.step
            -1
        """
        state = trainer.module.state_dict()
        self._names, self._model = list(state), list(state.values())
        loaded, self._loaded = self._loaded, None
        if trainer.state.global_step == 0:  # a fresh run: any earlier average or swap belongs to another run
            self._average, self._training, self._swapped, self.step = None, None, False, -1
        elif loaded is not None:
            self._put_back(loaded)
        if self._swapped:  # the module holds the average (a run resumed from an epoch's end, or a second fit)
            if self._average is None:
                self._average = _clone(self._model)
            self._use_training()
        if self._average is None:  # a fresh run, or EMA added to a resumed run that had none
            self._average = _clone(self._model)
        params = {id(p) for p in trainer.module.parameters()}
        averaged = [
            t.is_floating_point() and (self.buffers == "average" or id(t) in params)
            for t in trainer.module.state_dict(keep_vars=True).values()
        ]
        self._pairs = tuple(
            ([a for a, keep in zip(self._average, averaged, strict=True) if keep == side],
             [m for m, keep in zip(self._model, averaged, strict=True) if keep == side])
            for side in (True, False)
        )  # fmt: skip

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Put the training weights back into the model for the training pass.

        Example:
            >>> EMA().on_epoch_start(trainer, 2)  # doctest: +SKIP
        """
        self._use_training()

    def on_train_batch_end(self, trainer: Trainer, state: LoopState, output: StepOutput) -> None:
        """After an optimizer step (every ``every_n_steps``-th), move the average towards the weights.

        A step is recognised by ``state.global_step`` changing rather than by ``trainer.at_step_boundary``,
        which misses the shorter last accumulation group of an epoch whose batch count ``grad_accum`` does
        not divide.

        Example:
            >>> EMA().on_train_batch_end(trainer, trainer.state, output)  # doctest: +SKIP
        """
        step = state.global_step
        if step == self.step or step % self.every_n_steps != 0 or self._average is None:
            return
        self.step = step
        (average, weights), (average_copied, copied) = self._pairs
        with torch.no_grad():
            torch._foreach_lerp_(average, weights, 1.0 - self.decay_at(step))
            if copied:
                torch._foreach_copy_(average_copied, copied)

    def on_validation_start(self, trainer: Trainer) -> None:
        """Validate the average: put it into the model (with ``validate=True``).

        Example:
            >>> EMA().on_validation_start(trainer)  # doctest: +SKIP
        """
        self._use_average()

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        """Put the average into the model for the epoch's checkpoints (already there after validation).

        Example:
            >>> EMA().on_epoch_end(trainer, logs)  # doctest: +SKIP
        """
        self._use_average()

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        """Leave the average in the model, as after ``fit`` (a checkpoint, if any, is already written).

        Example:
            >>> EMA().on_exception(trainer, KeyboardInterrupt())  # doctest: +SKIP
        """
        self._use_average()

    # -- the two sets of weights ---------------------------------------------------------------

    def averaged_weights(self) -> dict[str, torch.Tensor]:
        """The average as a ``state_dict`` (copies), for ``model.load_state_dict``.

        Example:
            >>> import trainkit
            >>> model = torch.nn.Linear(2, 1)
            >>> ema = EMA(); ema.on_fit_start(trainkit.Trainer(model, torch.optim.SGD(model.parameters(), 0.1)))
            >>> sorted(ema.averaged_weights())
            ['bias', 'weight']
        """
        source = self._model if self._swapped else self._average
        if source is None:
            raise RuntimeError(
                "`EMA.averaged_weights()`: there is no average yet; it starts when `fit` starts (after a "
                "`load_checkpoint`, the checkpoint's model holds the average: `trainer.module.state_dict()`)"
            )
        return dict(zip(self._names, _clone(source), strict=True))

    def training_weights(self) -> dict[str, torch.Tensor]:
        """The weights the optimizer trained as a ``state_dict`` (copies), wherever they are now.

        Example:
            >>> import trainkit
            >>> model = torch.nn.Linear(2, 1)
            >>> ema = EMA(); ema.on_fit_start(trainkit.Trainer(model, torch.optim.SGD(model.parameters(), 0.1)))
            >>> torch.equal(ema.training_weights()["weight"], model.weight)
            True
        """
        source = self._training if self._swapped else self._model
        if source is None or not self._names:
            raise RuntimeError("`EMA.training_weights()`: the callback has not seen a model yet; call it after `fit`")
        return dict(zip(self._names, _clone(source), strict=True))

    def state_dict(self) -> dict[str, Any]:
        """The last update's step and the average; while the model holds the average, the training weights.

        The checkpoint's ``"model"`` holds the other set, so the weights are not saved twice.

        Example:
            >>> import trainkit
            >>> model = torch.nn.Linear(2, 1)
            >>> ema = EMA(); ema.on_fit_start(trainkit.Trainer(model, torch.optim.SGD(model.parameters(), 0.1)))
            >>> sorted(ema.state_dict()), sorted(ema.state_dict()["average"])
            (['average', 'step'], ['bias', 'weight'])
        """
        if self._loaded is not None:  # loaded and not yet put in place: unchanged
            return self._loaded
        if self._swapped and self._training is not None:
            return {"step": self.step, "training": dict(zip(self._names, self._training, strict=True))}
        if self._average is None:
            return {}
        return {"step": self.step, "average": dict(zip(self._names, self._average, strict=True))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take a checkpoint's state; it is put in place (and checked against the model) when ``fit`` starts.

        Example:
            >>> ema = EMA(); ema.load_state_dict({"step": 4, "average": {"weight": torch.zeros(1, 2)}}); ema.step
            4
        """
        if not state:
            return
        if "average" not in state and "training" not in state:
            raise ValueError(
                f"`EMA.load_state_dict` takes what `EMA.state_dict()` returns ('step' and 'average' or "
                f"'training'), got keys {sorted(state)}"
            )
        self._loaded = state
        self.step = int(state.get("step", -1))

    # -- internals -----------------------------------------------------------------------------

    def _put_back(self, loaded: dict[str, Any]) -> None:
        """Check a checkpoint's tensors against the model and copy them to its devices and dtypes."""
        saved = loaded.get("training", loaded.get("average", {}))
        missing, unexpected = sorted(set(self._names) - set(saved)), sorted(set(saved) - set(self._names))
        wrong = [n for n in self._names if n in saved and tuple(saved[n].shape) != tuple(self._state_shape(n))]
        if missing or unexpected or wrong:
            found = (f"missing {missing[:3]}; " if missing else "") + (
                f"unexpected {unexpected[:3]}; " if unexpected else ""
            )
            found += "".join(f"{n} {tuple(saved[n].shape)} vs {tuple(self._state_shape(n))}; " for n in wrong[:3])
            raise ValueError(
                f"the checkpoint's EMA state does not fit the model ({found.rstrip('; ')}): it was written for another "
                "model. Resume with the model it was trained with, or start a new run from the weights alone"
            )
        tensors = [saved[n].to(m.device, m.dtype) for n, m in zip(self._names, self._model, strict=True)]
        self.step = int(loaded.get("step", -1))
        if "training" in loaded:
            self._average, self._training, self._swapped = None, tensors, True
        else:
            self._average, self._training, self._swapped = tensors, None, False

    def _state_shape(self, name: str) -> torch.Size:
        return self._model[self._names.index(name)].shape

    def _use_average(self) -> None:
        if not self.validate or self._swapped or self._average is None or not self._model:
            return
        with torch.no_grad():
            self._training = _clone(self._model)
            torch._foreach_copy_(self._model, self._average)
        self._swapped = True

    def _use_training(self) -> None:
        if not self._swapped or self._training is None:
            return
        with torch.no_grad():
            torch._foreach_copy_(self._model, self._training)
        self._training, self._swapped = None, False


def _clone(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.detach().clone() for t in tensors]
