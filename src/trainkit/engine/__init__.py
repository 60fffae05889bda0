"""The training engine: ``Trainer``, the functional loops, precision, checkpoints, callbacks, DDP."""

from trainkit.engine.callbacks import EMA, Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from trainkit.engine.checkpoint import load_checkpoint, save_checkpoint, unwrap_model
from trainkit.engine.loops import LoopState, evaluate, predict, predict_iter, train_one_epoch
from trainkit.engine.lr_finder import LRFinderResult
from trainkit.engine.precision import MixedPrecision
from trainkit.engine.run_dir import RunDir
from trainkit.engine.seeding import Seeding
from trainkit.engine.trainer import Trainer

__all__ = [
    "EMA",
    "Callback",
    "EarlyStopping",
    "LRFinderResult",
    "LearningRateMonitor",
    "LoopState",
    "MixedPrecision",
    "ModelCheckpoint",
    "RunDir",
    "Seeding",
    "Trainer",
    "evaluate",
    "load_checkpoint",
    "predict",
    "predict_iter",
    "save_checkpoint",
    "train_one_epoch",
    "unwrap_model",
]
