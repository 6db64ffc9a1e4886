"""Export a trained model for deployment: ONNX or TorchScript, checked against PyTorch.

The exported graph is the model in evaluation mode: images ``(N, 3, H, W)``, normalised with
the ImageNet mean / std like :func:`adaptreid.data.build_transforms` does, to the retrieval
embedding ``(N, D)`` (BNNeck feature; PCB: per-part L2-normalised parts, concatenated). The
batch size is dynamic; H x W is the checkpoint's input size. After writing the file, the
exported model is run on a few random batches and its features compared with PyTorch's
(``atol``, 1e-4 by default); a larger difference is an error, not a warning.

Compare features with the distance the model was trained for (``eval.metric`` in the run's
config: euclidean for MSPLR, cosine for PAST).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import AdaptReIDError, ConfigError
from ..models import ReidModel
from ..rundir.model_io import model_from_checkpoint

log = logging.getLogger("adaptreid")

__all__ = ["FORMATS", "ExportReport", "export_checkpoint", "export_model"]

FORMATS = ("onnx", "torchscript")
_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


class ExportError(AdaptReIDError):
    """The export failed, or the exported model disagrees with PyTorch."""


@dataclass
class ExportReport:
    path: Path
    format: str
    input_shape: tuple[int, int, int, int]
    feat_dim: int
    max_abs_diff: float
    """Largest |exported - PyTorch| over the check batches."""
    checked_with: str
    """What ran the exported file for the check (onnxruntime, torch.jit)."""

    def summary(self) -> str:
        n, c, h, w = self.input_shape
        return (
            f"wrote {self.path} ({self.format}; input (N, {c}, {h}, {w}) -> features (N, "
            f"{self.feat_dim})); max |exported - PyTorch| = {self.max_abs_diff:.2e} "
            f"({self.checked_with})"
        )


def _check_batches(model: ReidModel, h: int, w: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, h, w, generator=g) for n in (1, 4, 7)]


def _export_torchscript(model: ReidModel, example: torch.Tensor, path: Path) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # still the portable format
        traced = torch.jit.trace(model, example, check_trace=False)
    traced.save(str(path))


def _run_torchscript(path: Path, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return [loaded(x) for x in batches]


def _export_onnx(model: ReidModel, example: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of the torch.export one,
        # which needs the onnxscript package; this one needs nothing beyond torch.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
            opset_version=opset,
        )


def _run_onnx(path: Path, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ExportError(
            "checking an ONNX export needs onnxruntime: pip install 'adaptreid[export]' "
            "(or pass --no-check)"
        ) from e
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(session.run(None, {"images": x.numpy()})[0]) for x in batches]


def export_model(
    model: ReidModel,
    path: str | Path,
    fmt: str,
    *,
    height: int,
    width: int,
    opset: int = 17,
    check: bool = True,
    atol: float = 1e-4,
) -> ExportReport:
    """Write ``model`` (CPU, eval mode) to ``path`` as ``fmt`` and check it (see module doc)."""
    if fmt not in FORMATS:
        raise ConfigError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    example = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(1))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if fmt == "onnx":
            _export_onnx(model, example, tmp, opset)
        else:
            _export_torchscript(model, example, tmp)
        tmp.replace(path)  # atomic: a killed export leaves no half-written model behind
    except AdaptReIDError:
        raise
    except Exception as e:
        raise ExportError(f"{fmt} export of {model.arch.get('backbone')!r} failed: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)

    with torch.no_grad():
        feat_dim = int(model(example[:1]).shape[1])
    diff, checked = float("nan"), "not checked"
    if check:
        batches = _check_batches(model, height, width)
        with torch.no_grad():
            ref = [model(x) for x in batches]
        got = (_run_onnx if fmt == "onnx" else _run_torchscript)(path, batches)
        checked = "onnxruntime" if fmt == "onnx" else "torch.jit.load"
        diff = max(float((a - b).abs().max()) for a, b in zip(ref, got))
        if not diff <= atol:  # also catches NaN
            raise ExportError(
                f"{path}: exported features differ from PyTorch's by {diff:.3g} (> atol {atol:g})"
            )
    return ExportReport(path, fmt, (-1, 3, height, width), feat_dim, diff, checked)


def export_checkpoint(
    checkpoint: str | Path,
    fmt: str,
    out: str | Path | None = None,
    *,
    opset: int = 17,
    check: bool = True,
    atol: float = 1e-4,
) -> ExportReport:
    """Export the model of an adaptreid checkpoint; ``out`` defaults to the checkpoint's
    name with ``.onnx`` / ``.torchscript.pt``. Writes ``<out>.json`` beside it (input size,
    normalisation, feature size, metric) for whoever deploys the file."""
    if fmt not in FORMATS:
        raise ConfigError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    model, info = model_from_checkpoint(checkpoint)
    height, width = int(info.get("height") or 256), int(info.get("width") or 128)
    ckpt = Path(checkpoint)
    if out is None:
        suffix = ".torchscript.pt" if fmt == "torchscript" else _SUFFIX[fmt]
        out = ckpt.with_name(ckpt.stem + suffix)
    report = export_model(
        model, out, fmt, height=height, width=width, opset=opset, check=check, atol=atol
    )
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

    metric = ((info.get("config") or {}).get("eval") or {}).get("metric", "euclidean")
    meta = {
        "source_checkpoint": str(ckpt),
        "format": fmt,
        "input": {
            "name": "images",
            "shape": ["N", 3, height, width],
            "layout": "RGB, float32, (pixel / 255 - mean) / std",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "output": {"name": "features", "shape": ["N", report.feat_dim], "metric": metric},
        "backbone": model.arch.get("backbone"),
        "max_abs_diff_vs_pytorch": report.max_abs_diff,
    }
    Path(str(report.path) + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    return report
