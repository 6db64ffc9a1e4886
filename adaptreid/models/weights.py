"""Loading pretrained weights safely, with a report of what did and did not load.

* Files are read with ``torch.load(..., weights_only=True)``: a pickle that would run code is
  refused with :class:`CheckpointError`, never executed.
* A raw state_dict, or a dict holding one under ``"state_dict"`` / ``"model"``, is accepted;
  DataParallel ``module.`` prefixes are stripped; ``prefix_map`` renames other prefixes, and
  without it a single wrapper prefix such as ``backbone.`` / ``base.`` (fast-reid,
  reid-strong-baseline checkpoints) is detected and stripped when that is what makes keys match.
* ImageNet classifier keys (``fc.*``, ``classifier.*``) are reported as unused, not as errors;
  tensors whose shape differs from the model's are reported and left out.
* ``allow_partial=False`` (what :func:`adaptreid.models.build_model` passes for a config's
  ``model.pretrained`` unless ``model.allow_partial_weights``) refuses a file that leaves some
  of the model's tensors at their initial values (missing, or of another shape), naming the
  file, the counts and the first missing names: e.g. the IBN-Net50-a file loaded into a plain
  ResNet-50 fills 253 of its tensors and leaves 13 ``bn1`` layers untrained.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from .registries import BACKBONES

__all__ = ["KNOWN_URLS", "LoadReport", "load_pretrained", "read_state_dict", "resolve_weights"]

logger = logging.getLogger("adaptreid")

#: ImageNet weights, by backbone name: torchvision's (IMAGENET1K_V1) and the official IBN-Net
#: v1.0 release.
KNOWN_URLS: dict[str, str] = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
    "resnet50_ibn_a": (
        "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet50_ibn_a-d9d0bb7b.pth"
    ),
    "resnet101_ibn_a": (
        "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet101_ibn_a-59ea0ac6.pth"
    ),
    "mobilenet_v2": "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
}

_CLASSIFIER_PREFIXES = ("fc.", "classifier.")
_WRAPPER_PREFIXES = ("backbone.", "base.", "model.", "encoder.", "features_extractor.")
_SHOW = 8  # names listed per category in the summary


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did. ``ok`` is true when every model tensor was loaded
    (``num_batches_tracked`` counters aside) and nothing else was left over except classifier
    keys."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    unused_classifier: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    renamed_prefix: str | None = None

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def __str__(self) -> str:
        def names(items: list[str]) -> str:
            more = f", ... (+{len(items) - _SHOW})" if len(items) > _SHOW else ""
            return ", ".join(items[:_SHOW]) + more

        total = len(self.loaded) + len(self.missing) + len(self.shape_mismatch)
        lines = [f"loaded {len(self.loaded)}/{total} tensors from {self.source}"]
        if self.renamed_prefix:
            lines.append(f"  stripped key prefix {self.renamed_prefix!r}")
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}): {names(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected ({len(self.unexpected)}): {names(self.unexpected)}")
        if self.shape_mismatch:
            items = [f"{k} file {tuple(a)} vs model {tuple(b)}" for k, a, b in self.shape_mismatch]
            lines.append(f"  shape mismatch, not loaded ({len(items)}): {names(items)}")
        if self.unused_classifier:
            lines.append(
                f"  unused classifier keys ({len(self.unused_classifier)}): "
                f"{names(self.unused_classifier)}"
            )
        if self.ignored:
            lines.append(f"  ignored ({len(self.ignored)}): {names(self.ignored)}")
        return "\n".join(lines)


# -- reading -------------------------------------------------------------------------------------


def _unpickling_detail(e: BaseException) -> str:
    text = str(e)
    for marker in ("WeightsUnpickler error:", "Unsupported global:"):
        if marker in text:
            rest = text.split(marker, 1)[1].strip()
            return rest.split("\n\n", 1)[0].strip()
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a weight file safely and return its tensors as a flat state_dict.

    Raises :class:`CheckpointError` if the file is missing, corrupt, holds no tensors, or holds
    pickled objects other than tensors (refused: loading those could run code).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"weight file not found: {p}")
    if not p.is_file():
        raise CheckpointError(f"weight path is not a file: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {p}: it contains non-tensor objects (pickled classes or "
            f"functions) that could run code when loaded, or it is not a PyTorch weight file. "
            f"Only tensors and plain containers are accepted. If you trust the file, re-save "
            f"just its state_dict. Detail: {_unpickling_detail(e)}"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {p}: corrupt or not a PyTorch file ({e})") from e
    return _extract_state_dict(obj, str(p))


def _extract_state_dict(obj: Any, source: str) -> dict[str, Tensor]:
    for _ in range(3):  # {"model": {"state_dict": {...}}} at worst
        if not isinstance(obj, Mapping):
            break
        inner = next(
            (obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)), None
        )
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state_dict")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not sd:
        raise CheckpointError(f"{source} holds no tensors (keys: {list(obj)[:10]})")
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        while k.startswith("module."):
            k = k[len("module.") :]
        out[k] = v
    return out


# -- resolving names and URLs --------------------------------------------------------------------


def _network_available(url: str, timeout: float = 3.0) -> bool:
    if os.environ.get("ADAPTREID_OFFLINE", "").strip() not in ("", "0"):
        return False
    host = urlparse(url).hostname
    if not host:
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_cache_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _canonical_arch(arch: str | None) -> str | None:
    """``"R50"`` -> ``"resnet50"``: an alias resolves to its factory's name."""
    if arch is None:
        return None
    key = arch.lower()
    if key not in KNOWN_URLS and key in BACKBONES:
        return getattr(BACKBONES.get(key), "__name__", key)
    return key


def resolve_weights(spec: str | os.PathLike[str], arch: str | None = None) -> Path | str:
    """Turn a weights spec into a local path (or a URL still to download).

    ``spec`` is a local file, an ``http(s)://`` URL, a :data:`KNOWN_URLS` name, or
    ``"imagenet"`` (needs ``arch``). A URL whose file is already in the torch hub cache
    resolves to that file.
    """
    s = str(spec)
    p = Path(s).expanduser()
    if p.exists():
        return p
    url: str | None = None
    if s.startswith(("http://", "https://")):
        url = s
    elif s.lower() in KNOWN_URLS:
        url = KNOWN_URLS[s.lower()]
    elif s.lower() == "imagenet":
        arch = _canonical_arch(arch)
        if arch is None or arch not in KNOWN_URLS:
            raise CheckpointError(
                f"no known ImageNet weights for backbone {arch!r}; known: "
                f"{', '.join(sorted(KNOWN_URLS))}. Pass a local weight file instead."
            )
        url = KNOWN_URLS[arch]
    if url is None:
        raise CheckpointError(
            f"weight file not found: {p} (not a file, a URL, 'imagenet' or one of "
            f"{', '.join(sorted(KNOWN_URLS))})"
        )
    cached = _hub_cache_file(url)
    return cached if cached.is_file() else url


def _download(url: str) -> dict[str, Tensor]:
    if not _network_available(url):
        raise CheckpointError(
            f"no network: download {url} elsewhere and pass the local path "
            f"(or put it in {_hub_cache_file(url).parent})"
        )
    try:
        obj = torch.hub.load_state_dict_from_url(
            url,
            map_location="cpu",
            weights_only=True,
            # torchvision names its files <name>-<sha256 prefix>.pth; others may not.
            check_hash=urlparse(url).hostname == "download.pytorch.org",
        )
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"refused to load {url}: {_unpickling_detail(e)}") from e
    except Exception as e:  # network errors come in many types
        raise CheckpointError(
            f"could not download {url} ({e}); download it elsewhere and pass the local path"
        ) from e
    return _extract_state_dict(obj, url)


# -- matching ------------------------------------------------------------------------------------


def _apply_prefix_map(sd: dict[str, Tensor], prefix_map: Mapping[str, str]) -> dict[str, Tensor]:
    olds = sorted(prefix_map, key=len, reverse=True)
    out = {}
    for k, v in sd.items():
        for old in olds:
            if k.startswith(old):
                k = prefix_map[old] + k[len(old) :]
                break
        out[k] = v
    return out


def _auto_strip(sd: dict[str, Tensor], target: Mapping[str, Tensor]) -> tuple[dict, str | None]:
    best, best_n, best_prefix = sd, sum(k in target for k in sd), None
    for prefix in _WRAPPER_PREFIXES:
        if any(k.startswith(prefix) for k in target):
            continue
        cand = {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in sd.items()}
        n = sum(k in target for k in cand)
        if n > best_n:
            best, best_n, best_prefix = cand, n, prefix
    return best, best_prefix


def _is_harmless_extra(key: str) -> bool:
    # Old (PyTorch < 0.4) InstanceNorm layers saved running stats that IBN's IN does not use.
    return key.endswith(("num_batches_tracked", ".IN.running_mean", ".IN.running_var"))


def _partial_message(report: LoadReport, arch: str | None) -> str:
    not_loaded = report.missing + [k for k, _, _ in report.shape_mismatch]
    total = len(report.loaded) + len(not_loaded)
    first = ", ".join(not_loaded[:_SHOW]) + (", ..." if len(not_loaded) > _SHOW else "")
    return (
        f"partial load of pretrained weights refused: {report.source} fills "
        f"{len(report.loaded)} of the {total} tensors of the {arch or 'model'} network; "
        f"{len(report.missing)} missing, {len(report.shape_mismatch)} of another shape "
        f"(first: {first}). Nothing was loaded. Is it this backbone's weight file? To load it "
        "anyway, leaving those tensors at their initial values, set "
        f"model.allow_partial_weights=true.\n{report}"
    )


def load_pretrained(
    module: nn.Module,
    path_or_url: str | os.PathLike[str],
    *,
    strict: bool = False,
    prefix_map: Mapping[str, str] | None = None,
    arch: str | None = None,
    allow_partial: bool = True,
) -> LoadReport:
    """Load weights into ``module`` and return (and log) a :class:`LoadReport`.

    Args:
        module: e.g. ``model.backbone`` (keys ``conv1.weight``, ...) or a whole ReidModel.
        path_or_url: local file, URL, :data:`KNOWN_URLS` name, or ``"imagenet"`` with ``arch``.
        strict: raise :class:`CheckpointError` (loading nothing) unless every model tensor is
            present with its shape and nothing but classifier keys is left over.
        prefix_map: ``{old_prefix: new_prefix}`` applied to the file's keys (longest match
            first), e.g. ``{"": "backbone."}`` to load a backbone file into a whole ReidModel.
        arch: backbone name used to resolve ``"imagenet"``.
        allow_partial: False: raise :class:`CheckpointError` (loading nothing) when some model
            tensor would keep its initial value (missing from the file or of another shape);
            keys the model does not have are still only reported.
    """
    where = resolve_weights(path_or_url, arch)
    if isinstance(where, Path):
        sd, source = read_state_dict(where), str(where)
    else:
        sd, source = _download(where), where
    target = module.state_dict()
    renamed = None
    if prefix_map is not None:
        sd = _apply_prefix_map(sd, prefix_map)
    else:
        sd, renamed = _auto_strip(sd, target)

    report = LoadReport(source=source, renamed_prefix=renamed)
    loadable: dict[str, Tensor] = {}
    for k, v in sd.items():
        if k in target:
            if tuple(v.shape) == tuple(target[k].shape):
                loadable[k] = v
            else:
                report.shape_mismatch.append((k, tuple(v.shape), tuple(target[k].shape)))
        elif k.startswith(_CLASSIFIER_PREFIXES):
            report.unused_classifier.append(k)
        elif _is_harmless_extra(k):
            report.ignored.append(k)
        else:
            report.unexpected.append(k)
    mismatched = {k for k, _, _ in report.shape_mismatch}
    report.missing = [
        k
        for k in target
        if k not in loadable and k not in mismatched and not k.endswith("num_batches_tracked")
    ]
    report.loaded = [k for k in target if k in loadable]
    if strict and not report.ok:
        raise CheckpointError(f"strict load failed, nothing loaded:\n{report}")
    if not allow_partial and (report.missing or report.shape_mismatch):
        raise CheckpointError(_partial_message(report, arch))
    if not loadable:
        raise CheckpointError(
            f"no tensor of {source} matches the model; is it the right architecture?\n{report}"
        )
    module.load_state_dict(loadable, strict=False)
    logger.log(logging.INFO if report.ok else logging.WARNING, "pretrained weights: %s", report)
    return report
