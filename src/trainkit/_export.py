"""Export a trained model for deployment (ONNX or a ``torch.export`` program), verified against PyTorch.

The function is :func:`trainkit.export`; this module is private because a module named ``trainkit.export``
would replace the function on the package as soon as it is imported.

The exported graph takes images ``[N, C, H, W]`` (input ``"image"``: float32 normalised as in training, or
raw uint8 pixels with ``preprocessing=True``) and returns the main output's logits ``[N, K, H', W']``
(output ``"logits"``; the auxiliary outputs of torchvision-style models are left out). Height and width
are dynamic unless ``dynamic=False``; the batch is 1 unless ``dynamic_batch=True``.

Example:
    >>> FORMATS, INPUT_NAME, OUTPUT_NAME
    (('onnx', 'exported-program'), 'image', 'logits')
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainkit._export_diagnosis import dynamic_problem, failing_layer, first_line, onnx_failure, trace_failure
from trainkit.errors import CheckpointError, ExportError
from trainkit.utils.outputs import main_output

if TYPE_CHECKING:
    from trainkit.models import CheckpointSpec, Preprocessing

__all__ = ["FORMATS", "INPUT_NAME", "OUTPUT_NAME", "ExportError", "ExportResult", "export"]

FORMATS = ("onnx", "exported-program")
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
_EXTRA_HINT = "ONNX export needs the `export` extra: `pip install 'trainkit[export]'` (onnx, onnxruntime, onnxscript)"
_EXTERNAL_DATA_BYTES = 1 << 30  # weights past 1 GiB go to a `.data` file beside the .onnx (protobuf stops at 2 GiB)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote and how closely it matches PyTorch.

    Attributes:
        path: the exported file.
        format: ``"onnx"`` or ``"exported-program"``.
        max_abs_diff: ``{(height, width): max |export - PyTorch|}`` over the logits, one entry per size verified.
        tolerance: the largest difference accepted.
        input_dtype: ``"uint8"`` when the preprocessing is in the graph, else ``"float32"``.

    Example:
        >>> print(ExportResult(Path("m.onnx"), "onnx", {(32, 32): 2.5e-07}, 1e-4, "float32"))
        m.onnx (onnx, float32 input): max |diff| vs PyTorch 2.5e-07 at 32x32 (tolerance 1e-04)
    """

    path: Path
    format: str
    max_abs_diff: dict[tuple[int, int], float]
    tolerance: float
    input_dtype: str

    def __str__(self) -> str:
        diffs = ", ".join(f"{d:.1e} at {h}x{w}" for (h, w), d in self.max_abs_diff.items())
        return (
            f"{self.path} ({self.format}, {self.input_dtype} input): max |diff| vs PyTorch {diffs} "
            f"(tolerance {self.tolerance:.0e})"
        )


def export(
    checkpoint_or_model: str | os.PathLike[str] | Mapping[str, Any] | nn.Module,
    out: str | os.PathLike[str],
    format: str = "onnx",
    *,
    preprocessing: bool | Preprocessing = False,
    sizes: Sequence[int | tuple[int, int]] | None = None,
    dynamic: bool = True,
    dynamic_batch: bool = False,
    tolerance: float = 1e-4,
    in_channels: int | None = None,
    opset: int | None = None,
    verbose: bool = True,
) -> ExportResult:
    """Rebuild a model from its checkpoint, export it, and check the export computes what PyTorch computes.

    What happens::

        model, spec = rebuild from the checkpoint's spec (or take the nn.Module given; a copy, in fp32, eval mode)
        graph = [uint8 -> float, * scale, - mean, / std]? -> model -> main output
        program = torch.export(graph, dynamic height and width)             # a layer that cannot be traced is named
        write program as ONNX (torch.onnx, dynamo) or as a .pt2 file         # an op without ONNX equivalent is named
        for each size: max |run the file (onnxruntime / torch.export.load) - graph in PyTorch| <= tolerance
        move the file to `out` (nothing is written there if a step fails)

    Args:
        checkpoint_or_model: a checkpoint path (or loaded dict) written by ``trainkit train`` or recording a
            :class:`~trainkit.models.CheckpointSpec`; or an ``nn.Module`` (then ``sizes`` is needed).
        out: the file to write, e.g. ``model.onnx`` or ``model.pt2``; its folder is created.
        format: ``"onnx"`` (run with onnxruntime; needs ``pip install 'trainkit[export]'``) or
            ``"exported-program"`` (a ``torch.export`` program: ``torch.export.load(out).module()``).
        preprocessing: ``True`` puts the checkpoint's preprocessing in the graph, so it takes raw uint8 pixels
            ``[N, C, H, W]`` (times ``scale``, minus ``mean``, over ``std``; resizing stays outside); or a
            :class:`~trainkit.models.Preprocessing` to embed. ``False``: the graph takes normalised float32.
        sizes: ``(height, width)`` of the inputs the export is checked on (the first is also traced). Default:
            the checkpoint's training size, and a second size about 1.5x its height and 1.25x its width, odd
            (rounded up to the multiple of 32 or so that smp models require). One size given: the second is
            derived the same way from it.
        dynamic: export with a dynamic height and width; ``False`` fixes the first of ``sizes``.
        dynamic_batch: export with a dynamic batch size too (checked on a batch of 2); ``False`` fixes it at 1.
            Off by default: some models trace differently for a batch of 1 (smp's Segformer accepts at most 2).
        tolerance: the largest max absolute difference of the logits accepted (1e-4 suits fp32).
        in_channels: image channels when a model is given and its first ``Conv2d`` does not tell.
        opset: ONNX opset version (default: torch's).
        verbose: print the result (file, format, differences).

    Returns:
        :class:`ExportResult`: the path, the format, the max absolute difference per size, the tolerance.

    Raises:
        ExportError: a layer or op cannot be exported (named, with its source line), or the export differs from
            PyTorch by more than ``tolerance`` or fails at one of the ``sizes``; nothing is written to ``out``.
        CheckpointError: the checkpoint cannot be read, or records no model spec.
        ValueError: an argument is malformed (the message says what is expected).
        ImportError: ``format="onnx"`` without onnx, onnxruntime and onnxscript installed.

    Example:
        >>> import tempfile
        >>> from trainkit.models import Preprocessing, UNet
        >>> prep = Preprocessing(32, mean=(0.5,), std=(0.25,))
        >>> result = export(UNet(1, 2, base_channels=4, depth=2), tempfile.mkdtemp() + "/unet.pt2",
        ...                 "exported-program", preprocessing=prep, sizes=[(32, 32), (33, 47)], verbose=False)
        >>> result.input_dtype, list(result.max_abs_diff), max(result.max_abs_diff.values()) < 1e-4
        ('uint8', [(32, 32), (33, 47)], True)
    """
    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {', '.join(map(repr, FORMATS))}, got {format!r}")
    if not (isinstance(tolerance, (int, float)) and 0 < tolerance < float("inf")):
        raise ValueError(f"`tolerance` must be a finite number > 0 (1e-4 for fp32), got {tolerance!r}")
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"`out` {out} is a folder: give the file to write, e.g. {out / _default_name(format)}")
    if format == "exported-program" and out.suffix != ".pt2":
        raise ValueError(
            f"`out` {out} must end in .pt2 for format='exported-program' (torch.export.load reads .pt2 files): "
            f"e.g. {out.with_suffix('.pt2')}"
        )
    if not hasattr(torch.export.Dim, "DYNAMIC"):
        raise ImportError(
            f"`trainkit.export` needs torch >= 2.6, this is torch {torch.__version__}: `pip install -U torch`"
        )
    model, spec = _load(checkpoint_or_model)
    channels = _in_channels(model, spec, in_channels)
    prep = _preprocessing(preprocessing, spec, channels)
    verify_sizes = _sizes(sizes, spec, model, dynamic)
    if format == "onnx":
        _require_onnx()
    graph = _Deployable(model, prep).eval()

    generator = torch.Generator().manual_seed(0)
    batch = 2 if dynamic_batch else 1
    shapes = [(batch if i == 0 else 1, channels, h, w) for i, (h, w) in enumerate(verify_sizes)]
    inputs = [_sample(generator, shape, prep) for shape in shapes]
    expected = [_reference(graph, x) for x in inputs]
    free = torch.export.Dim.DYNAMIC
    dims = {**({0: free} if dynamic_batch else {}), **({2: free, 3: free} if dynamic else {})}
    program = _export_program(graph, inputs[0][:1], dims)

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".trainkit-export-", dir=out.parent) as staging:
        staged = Path(staging) / out.name
        if format == "onnx":
            _write_onnx(program, inputs[0][:1], staged, opset, _nbytes(model) > _EXTERNAL_DATA_BYTES)
        else:
            torch.export.save(program, staged)
        run = _runner(format, staged)
        diffs: dict[tuple[int, int], float] = {}
        for (h, w), x, y in zip(verify_sizes, inputs, expected, strict=True):
            try:
                got = run(x)
            except Exception as err:
                raise ExportError(
                    f"the exported model fails on a {h}x{w} input ({type(err).__name__}: {first_line(err)}): the "
                    f"model may only work at some sizes (smp models at multiples of 32); choose `sizes` it accepts, "
                    f"or export at one size with `dynamic=False`"
                ) from err
            diffs[(h, w)] = _max_abs_diff(got, y, (h, w))
        result = ExportResult(out, format, diffs, float(tolerance), "uint8" if prep else "float32")
        if max(diffs.values()) > tolerance:
            raise ExportError(
                f"the export differs from PyTorch by more than the tolerance: {result}. {out} was not "
                "written; check the model for layers that behave differently when traced, or raise `tolerance` if "
                "the difference is expected"
            )
        for produced in Path(staging).iterdir():  # the file, and its `.data` file for models over 1 GiB
            os.replace(produced, out.parent / produced.name)
    if verbose:
        print(result)
    return result


class _Deployable(nn.Module):
    """The model as deployed: the training preprocessing in front (optionally), the main output only."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, preprocessing: Preprocessing | None) -> None:
        super().__init__()
        self.model = model
        self.scale = preprocessing.scale if preprocessing else None
        shape = (1, -1, 1, 1)
        mean, std = (preprocessing.mean, preprocessing.std) if preprocessing else ((), ())
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            image = (image.to(torch.float32) * self.scale - self.mean) / self.std
        return main_output(self.model(image))


def _load(source: str | os.PathLike[str] | Mapping[str, Any] | nn.Module) -> tuple[nn.Module, CheckpointSpec | None]:
    """The model in fp32 and eval mode (a copy of a module given, so the caller's stays as it is) and its spec."""
    from trainkit.engine.checkpoint import load_checkpoint
    from trainkit.models import from_checkpoint

    if isinstance(source, nn.Module):
        return copy.deepcopy(source).cpu().float().eval(), None
    if isinstance(source, Mapping):
        model, spec = from_checkpoint(source)
        return model.float(), spec
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"`checkpoint_or_model` must be a checkpoint path, a loaded checkpoint dict or an `nn.Module`, got "
            f"{type(source).__name__}"
        )
    try:
        model, spec = from_checkpoint(load_checkpoint(source))
    except CheckpointError as err:
        raise CheckpointError(f"{source}: {err}") from err
    except ValueError as err:  # a registered model this process has not registered
        raise ValueError(f"{source}: {err}") from err
    return model.float(), spec


def _in_channels(model: nn.Module, spec: CheckpointSpec | None, given: int | None) -> int:
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int) or given < 1:
            raise ValueError(f"`in_channels` must be an int >= 1, got {given!r}")
        return given
    if spec is not None:
        return spec.model.in_channels
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is None:
        raise ValueError(
            f"cannot tell how many channels {type(model).__name__} takes (it has no `nn.Conv2d`): pass `in_channels=`"
        )
    return first_conv.in_channels


def _preprocessing(option: bool | Preprocessing, spec: CheckpointSpec | None, channels: int) -> Preprocessing | None:
    from trainkit.models import Preprocessing

    if option is False:
        return None
    if option is True:
        if spec is None:
            raise ValueError(
                "`preprocessing=True` embeds the preprocessing a checkpoint records, and a model was given: pass the "
                "checkpoint instead, or `preprocessing=trainkit.models.Preprocessing(size, mean=..., std=...)`"
            )
        option = spec.preprocessing
    if not isinstance(option, Preprocessing):
        raise TypeError(
            f"`preprocessing` must be True, False or a `trainkit.models.Preprocessing`, got {type(option).__name__}"
        )
    if len(option.mean) != channels:
        raise ValueError(
            f"the preprocessing has {len(option.mean)} mean/std value(s) and the model takes {channels} channel(s): "
            "give one value per channel"
        )
    return option


def _sizes(
    given: Sequence[int | tuple[int, int]] | None, spec: CheckpointSpec | None, model: nn.Module, dynamic: bool
) -> list[tuple[int, int]]:
    """The (height, width) of the verification inputs: the given ones, else the training size and a second."""
    if given is None:
        if spec is None:
            raise ValueError(
                "`sizes` is needed when a model is given (no checkpoint records its training size): e.g. "
                "`sizes=[(256, 256)]` verifies at 256x256 and at a second size derived from it"
            )
        given = [spec.preprocessing.size]  # type: ignore[list-item]
    if isinstance(given, (int, tuple)) or not list(given):
        raise ValueError(f"`sizes` must be a non-empty list of (height, width) or ints, got {given!r}")
    pairs = []
    for size in given:
        pair = (size, size) if isinstance(size, int) else tuple(size)
        if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in pair):
            raise ValueError(f"each of `sizes` must be an int or (height, width) of ints >= 1, got {size!r}")
        pairs.append((int(pair[0]), int(pair[1])))
    if not dynamic:
        if len(pairs) > 1:
            raise ValueError(
                f"`dynamic=False` fixes the input size, so the export runs at one size only; got `sizes={given!r}`: "
                "give one size, or keep `dynamic=True`"
            )
        return pairs
    if len(pairs) == 1:
        h, w = pairs[0]
        multiple = _size_multiple(model)
        pairs.append((_round_up((h * 3 // 2) | 1, multiple), _round_up((w * 5 // 4) | 1, multiple)))
    return pairs


def _size_multiple(model: nn.Module) -> int:
    """The multiple that the input's height and width must be, when the model says so (smp), else 1."""
    encoder = getattr(model, "encoder", None)
    stride = getattr(encoder, "output_stride", None)
    if getattr(model, "requires_divisible_input_shape", False) and isinstance(stride, int):
        return stride
    return 1


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _sample(generator: torch.Generator, shape: tuple[int, ...], prep: Preprocessing | None) -> torch.Tensor:
    if prep is not None:
        return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    return torch.randn(shape, generator=generator)


def _reference(graph: _Deployable, x: torch.Tensor) -> torch.Tensor:
    """The graph's output in PyTorch; a model that fails on this input is named with its layer."""
    try:
        with torch.no_grad():
            return graph(x)
    except Exception as err:
        raise ExportError(
            f"the model fails in PyTorch on an input of shape {list(x.shape)} ({type(err).__name__} in "
            f"{failing_layer(err, graph)}: {first_line(err)}): give `sizes` (and `in_channels`) that the model "
            "accepts, or export at one size with `dynamic=False`"
        ) from err


def _export_program(graph: _Deployable, example: torch.Tensor, dims: dict[int, Any]) -> torch.export.ExportedProgram:
    """``torch.export`` of the graph with the dynamic dimensions ``dims``; a failure names the layer."""
    try:
        with _size_oblivious():
            program = torch.export.export(graph, (example,), dynamic_shapes=(dims or None,))
    except Exception as err:
        raise ExportError(trace_failure(err, graph, bool(dims))) from err
    problem = dynamic_problem(program, dims)
    if problem:
        raise ExportError(problem)
    return program


@contextlib.contextmanager
def _size_oblivious() -> Iterator[None]:
    """Trace without guards on whether a size is 1 (e.g. a UNet's bottleneck of an input smaller than 2**(depth+1)).

    Without it, strides computed for a dynamic size that might be 1 add a guard that this size is not 1, and the
    program refuses such inputs. torch.onnx's own exporter traces the same way; a torch without the option
    traces without it.
    """
    config = torch.fx.experimental._config  # type: ignore[attr-defined]
    if not hasattr(config, "backed_size_oblivious"):
        yield
        return
    with config.patch(backed_size_oblivious=True):  # type: ignore[attr-defined]
        yield


def _write_onnx(
    program: torch.export.ExportedProgram,
    example: torch.Tensor,
    path: Path,
    opset: int | None,
    external_data: bool,
) -> None:
    """Convert the program to ONNX; an op without an ONNX equivalent is named with the layer that uses it."""
    try:
        torch.onnx.export(
            program,
            (example,),
            str(path),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            external_data=external_data,
            verbose=False,
        )
    except Exception as err:
        raise ExportError(onnx_failure(err, program)) from err


def _runner(format: str, path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function that runs the exported file as a deployment would: onnxruntime, or the loaded program."""
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
    module = torch.export.load(path).module()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return main_output(module(x))

    return run


def _max_abs_diff(got: torch.Tensor, expected: torch.Tensor, size: tuple[int, int]) -> float:
    if got.shape != expected.shape:
        raise ExportError(
            f"at {size[0]}x{size[1]} the export returns shape {tuple(got.shape)} and PyTorch {tuple(expected.shape)}: "
            "the model's size handling did not export; try `dynamic=False`"
        )
    return float((got.float() - expected.float()).abs().max())


def _nbytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def _default_name(format: str) -> str:
    return "model.onnx" if format == "onnx" else "model.pt2"


def _require_onnx() -> None:
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError as err:
            raise ImportError(f"{_EXTRA_HINT}; {name} is missing") from err
