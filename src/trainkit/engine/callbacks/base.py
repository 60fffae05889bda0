"""The ``Callback`` base: hooks at fit, epoch, batch and validation boundaries, all no-ops."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainkit.engine.loops import LoopState
    from trainkit.engine.step import StepOutput
    from trainkit.engine.trainer import Trainer

__all__ = ["HOOKS", "Callback", "CallbackList"]

HOOKS = (
    "on_fit_start",
    "on_epoch_start",
    "on_train_batch_end",
    "on_validation_start",
    "on_validation_end",
    "on_epoch_end",
    "on_fit_end",
    "on_exception",
)


class Callback:
    """Base class for callbacks: override the hooks you need; the others cost nothing.

    Order within an epoch: ``on_epoch_start`` → ``on_train_batch_end`` (every batch) →
    ``on_validation_start`` and ``on_validation_end`` (when there is a validation loader) →
    ``on_epoch_end`` (after the epoch's row is in ``trainer.history``). Set ``trainer.should_stop = True``
    to end ``fit`` after the current epoch. Values added to ``trainer.epoch_logs`` before ``on_epoch_end`` land
    in the epoch's history row and ``metrics.csv``.

    A callback with state to keep across a resume implements ``state_dict``/``load_state_dict``
    (tensors and plain types only, so checkpoints load with ``weights_only=True``).

    Callbacks run in the order given, except that a higher :attr:`order` runs later:
    ``ModelCheckpoint`` has 100, so the checkpoint it writes at an epoch's end holds the state that the
    other callbacks (``EarlyStopping``'s count, say) updated for that epoch, wherever it is in the list.

    Example:
        >>> class PrintLoss(Callback):
        ...     def on_epoch_end(self, trainer, logs):
        ...         print(f"epoch {logs['epoch']}: {logs['train/loss']:.3f}")
        >>> PrintLoss.order
        0
    """

    order: int = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        """Called once when ``fit`` starts, after a resume has been loaded.

        Example:
            >>> class Announce(Callback):
            ...     def on_fit_start(self, trainer):
            ...         print(f"training from epoch {trainer.state.epoch + 1}")
        """

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Called before the training pass of ``epoch`` (1-based).

        Example:
            >>> class Unfreeze(Callback):
            ...     def on_epoch_start(self, trainer, epoch):
            ...         if epoch == 5:
            ...             trainer.module.requires_grad_(True)
        """

    def on_train_batch_end(self, trainer: Trainer, state: LoopState, output: StepOutput) -> None:
        """Called after every training batch; ``state.global_step`` counts optimizer steps.

        Example:
            >>> class EveryHundredSteps(Callback):
            ...     def on_train_batch_end(self, trainer, state, output):
            ...         if state.global_step % 100 == 0:
            ...             print(state.global_step)
        """

    def on_validation_start(self, trainer: Trainer) -> None:
        """Called before the validation pass of an epoch (e.g. to validate other weights, as ``EMA`` does).

        Example:
            >>> class Announce(Callback):
            ...     def on_validation_start(self, trainer):
            ...         print(f"validating epoch {trainer.state.epoch + 1}")
        """

    def on_validation_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        """Called with the validation results (``{"val/loss": ..., "val/<metric>": ...}``).

        Example:
            >>> class PrintVal(Callback):
            ...     def on_validation_end(self, trainer, logs):
            ...         print(logs.get("val/miou"))
        """

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        """Called with the epoch's history row, after it is logged.

        Example:
            >>> class StopAtTarget(Callback):
            ...     def on_epoch_end(self, trainer, logs):
            ...         trainer.should_stop = logs.get("val/miou", 0.0) >= 0.95
        """

    def on_fit_end(self, trainer: Trainer) -> None:
        """Called once when ``fit`` ends normally or by ``should_stop``.

        Example:
            >>> class Done(Callback):
            ...     def on_fit_end(self, trainer):
            ...         print(len(trainer.history), "epochs")
        """

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        """Called when ``fit`` is interrupted by an exception (Ctrl-C included) before it propagates.

        Example:
            >>> class Report(Callback):
            ...     def on_exception(self, trainer, error):
            ...         print(f"stopped at step {trainer.state.global_step}: {error!r}")
        """

    def state_dict(self) -> dict[str, Any]:
        """State to save in checkpoints (default: nothing).

        Example:
            >>> Callback().state_dict()
            {}
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Example:
            >>> Callback().load_state_dict({})
        """


class CallbackList:
    """Dispatches each hook only to the callbacks that override it (as torchtnt does).

    Example:
        >>> calls = CallbackList([Callback()])
        >>> calls.dispatch("on_fit_start", None)
    """

    def __init__(self, callbacks: list[Callback]):
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(
                    f"callbacks must subclass `trainkit.callbacks.Callback`, got {type(cb).__name__}; "
                    f"implement any of {', '.join(HOOKS)} on a Callback subclass"
                )
        self.callbacks = list(callbacks)
        ordered = sorted(self.callbacks, key=lambda cb: cb.order)  # stable: the given order otherwise
        self._by_hook = {hook: [cb for cb in ordered if _overrides(cb, hook)] for hook in HOOKS}

    def dispatch(self, hook: str, *args: Any) -> None:
        """Call ``hook`` on every callback that overrides it, in order (by ``order``, then as given).

        Example:
            >>> CallbackList([]).dispatch("on_fit_end", None)
        """
        for cb in self._by_hook[hook]:
            getattr(cb, hook)(*args)

    def has(self, hook: str) -> bool:
        """Whether any callback overrides ``hook`` (lets the loop skip per-batch work).

        Example:
            >>> CallbackList([Callback()]).has("on_train_batch_end")
            False
        """
        return bool(self._by_hook[hook])

    def state_dict(self) -> dict[str, Any]:
        """``{"<index>:<ClassName>": state}`` for callbacks with state.

        Example:
            >>> CallbackList([Callback()]).state_dict()
            {}
        """
        return {_key(i, cb): s for i, cb in enumerate(self.callbacks) if (s := cb.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Give each callback its saved state (matched by position and class name).

        Example:
            >>> CallbackList([Callback()]).load_state_dict({})
        """
        for i, cb in enumerate(self.callbacks):
            if _key(i, cb) in state:
                cb.load_state_dict(state[_key(i, cb)])


def _overrides(cb: Callback, hook: str) -> bool:
    # A hook missing from the class (``MagicMock(spec=Callback)`` creates its methods per instance) counts as given.
    impl = getattr(type(cb), hook, None)
    return impl is None or impl is not getattr(Callback, hook)


def _key(i: int, cb: Callback) -> str:
    return f"{i}:{type(cb).__name__}"
