"""Example segmentation models; any ``nn.Module`` can be trained with trainkit, these are ready-made ones."""

from trainkit.models.unet import UNet

__all__ = ["UNet"]
