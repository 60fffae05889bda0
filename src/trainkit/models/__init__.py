"""Models: trainkit's ``UNet``, and a factory for torchvision and segmentation_models_pytorch models.

Any ``nn.Module`` can be trained with trainkit; the factory (``create_model``, ``ModelSpec``) names a
model in plain data, so a checkpoint that records its :class:`CheckpointSpec` rebuilds it alone.
"""

from trainkit.models.factory import ModelSpec, available_models, create_model, register
from trainkit.models.finetune import find_encoder, param_groups, set_encoder_trainable
from trainkit.models.spec import CheckpointSpec, Preprocessing, from_checkpoint
from trainkit.models.unet import UNet

__all__ = [
    "CheckpointSpec",
    "ModelSpec",
    "Preprocessing",
    "UNet",
    "available_models",
    "create_model",
    "find_encoder",
    "from_checkpoint",
    "param_groups",
    "register",
    "set_encoder_trainable",
]
