"""U-Net (Ronneberger et al., 2015) with same-padding convolutions and batch norm, for any input size.

Example:
    >>> model = UNet(in_channels=3, out_channels=2, base_channels=8, depth=3)
    >>> model(torch.randn(2, 3, 37, 53)).shape
    torch.Size([2, 2, 37, 53])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet"]


class UNet(nn.Module):
    """The U-Net encoder-decoder with skip connections, returning per-pixel class logits.

    Level ``i`` of the encoder has ``base_channels * 2**i`` channels (``i = 0 .. depth``, the deepest being the
    bottleneck). Each level is a double 3×3 convolution (``bias=False``) + BatchNorm + ReLU block; the encoder
    goes down with 2×2 max-pooling; the decoder goes up with a 2×2 transposed convolution that halves the
    channels (or, with ``bilinear=True``, a bilinear upsample followed by a 1×1 convolution that halves them),
    concatenates the encoder's feature map of the same level, and applies a double-conv block. A 1×1
    convolution maps ``base_channels`` to ``out_channels`` logits. Convolutions use same-padding, so the output
    has the input's height and width.

    Any input of at least ``2**depth`` pixels a side works: when H or W is not a multiple of ``2**depth``,
    pooling rounds down and each upsampled map is zero-padded to its skip connection's size. The padding is
    computed from the sizes without branching, so ``torch.export`` with a dynamic height and width (and
    :func:`trainkit.export`) gives one graph for every size.

    Args:
        in_channels: Channels of the input images (3 for RGB, 1 for grayscale).
        out_channels: Channels of the output, one logit per class (use 1 with a binary-logit loss).
        base_channels: Channels of the first level; 64 in the paper.
        depth: Number of down-sampling steps; 4 in the paper.
        bilinear: Upsample with bilinear interpolation + 1×1 convolution instead of transposed convolutions.

    Raises:
        ValueError: an argument is not an int >= 1 (``bilinear`` not a bool).

    Example:
        >>> model = UNet(in_channels=1, out_channels=3, base_channels=4, depth=2, bilinear=True)
        >>> model(torch.randn(1, 1, 20, 30)).shape
        torch.Size([1, 3, 20, 30])
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 2,
        base_channels: int = 64,
        depth: int = 4,
        bilinear: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("base_channels", base_channels),
            ("depth", depth),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`UNet({name}=...)` must be an int >= 1, got {value!r}")
        if not isinstance(bilinear, bool):
            raise ValueError(f"`UNet(bilinear=...)` must be True or False, got {bilinear!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.depth = depth
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList(
            [_DoubleConv(in_channels, widths[0])] + [_DoubleConv(widths[i], widths[i + 1]) for i in range(depth)]
        )
        self.pool = nn.MaxPool2d(2)
        # Decoder stage i turns level i + 1 into level i, from the bottleneck up (i = depth - 1 .. 0).
        self.up = nn.ModuleList([_up(widths[i + 1], widths[i], bilinear) for i in reversed(range(depth))])
        self.decoder = nn.ModuleList([_DoubleConv(2 * widths[i], widths[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, out_channels, H, W]`` for images ``[N, in_channels, H, W]``.

        Raises:
            ValueError: the input is not 4-D, has another channel count, or is smaller than ``2**depth``.

        Example:
            >>> UNet(3, 2, base_channels=4, depth=1)(torch.randn(1, 3, 5, 7)).shape
            torch.Size([1, 2, 5, 7])
        """
        self._check_input(x)
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()  # the bottleneck
        for up, block in zip(self.up, self.decoder, strict=True):
            skip = skips.pop()
            x = up(x)
            # Pooling rounded odd sizes down: pad the upsampled map (left/top half, right/bottom the rest). The
            # pad is applied even when it is zero: with no branch on the sizes, `torch.export` with a dynamic
            # height and width records the pad as arithmetic on the sizes instead of a guard on their parity.
            dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
            x = F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(
                f"UNet expects a batch [N, C, H, W], got a {x.ndim}-D tensor of shape {tuple(x.shape)}: "
                "add the batch dimension with `x.unsqueeze(0)`"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects {self.in_channels} input channels, got {x.shape[1]}: build "
                f"`UNet(in_channels={x.shape[1]})` or convert the images (e.g. the dataset's `channels=`)"
            )
        smallest = 2**self.depth
        if min(x.shape[-2:]) < smallest:
            raise ValueError(
                f"UNet with depth={self.depth} needs inputs of at least {smallest}x{smallest} pixels, got "
                f"{x.shape[-2]}x{x.shape[-1]}: resize or pad the images, or use a smaller `depth`"
            )


class _DoubleConv(nn.Sequential):
    """(3×3 conv without bias → BatchNorm → ReLU) twice; the bias would be cancelled by the norm."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def _up(in_channels: int, out_channels: int, bilinear: bool) -> nn.Module:
    """Double the resolution and go from ``in_channels`` to ``out_channels``."""
    if bilinear:
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(in_channels, out_channels, kernel_size=1),
        )
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
