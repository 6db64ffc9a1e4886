"""Image transforms in plain torch + PIL (no torchvision), with torchvision's semantics.

Geometric and colour transforms take a PIL image (``Pad``, ``RandomCrop``,
``RandomHorizontalFlip`` and ``RandomColorChange`` also take a CHW tensor); ``ToTensor``
turns a PIL image into a float CHW tensor in [0, 1]; ``Normalize`` and ``RandomErasing`` work
on that tensor. All randomness comes from torch's RNG (``torch.rand`` / ``torch.randint``),
so ``torch.manual_seed`` and DataLoader worker seeding make augmentation reproducible.

The usual re-ID pipeline (Luo et al.'s strong baseline) is :func:`build_transforms`::

    Resize -> RandomHorizontalFlip -> Pad -> RandomCrop [-> RandomColorChange]
           -> ToTensor -> Normalize -> RandomErasing
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

__all__ = [
    "Augmentation",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Compose",
    "Normalize",
    "Pad",
    "RandomColorChange",
    "RandomCrop",
    "RandomErasing",
    "RandomHorizontalFlip",
    "Resize",
    "ToTensor",
    "build_transforms",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Img = Image.Image | torch.Tensor


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def _size_pair(size: Sequence[int] | int, what: str) -> tuple[int, int]:
    if isinstance(size, int) or len(size) != 2 or any(int(s) <= 0 for s in size):
        raise ValueError(
            f"{what}: size must be a (height, width) pair of positive ints, got {size!r}"
        )
    return int(size[0]), int(size[1])


def _hw(img: Img) -> tuple[int, int]:
    if isinstance(img, torch.Tensor):
        return int(img.shape[-2]), int(img.shape[-1])
    return img.height, img.width


class Compose:
    """Apply ``transforms`` in order."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: Any) -> Any:
        for t in self.transforms:
            img = t(img)
        return img

    def __repr__(self) -> str:
        body = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{body}\n])"


class Resize:
    """Resize a PIL image to exactly ``(height, width)`` (bilinear, like torchvision)."""

    def __init__(self, size: Sequence[int], interpolation: int = Image.BILINEAR) -> None:
        self.size = _size_pair(size, "Resize")
        self.interpolation = interpolation

    def __call__(self, img: Image.Image) -> Image.Image:
        h, w = self.size
        if img.size == (w, h):
            return img
        return img.resize((w, h), self.interpolation)

    def __repr__(self) -> str:
        return f"Resize(size={self.size})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, img: Img) -> Img:
        if torch.rand(()).item() < self.p:
            if isinstance(img, torch.Tensor):
                return img.flip(-1)
            return img.transpose(Image.FLIP_LEFT_RIGHT)
        return img

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Pad:
    """Pad with a constant ``fill``: ``padding`` is an int (all sides) or ``(left, top,
    right, bottom)``."""

    def __init__(self, padding: int | Sequence[int], fill: int = 0) -> None:
        pads = (padding,) * 4 if isinstance(padding, int) else tuple(int(p) for p in padding)
        if len(pads) != 4 or min(pads) < 0:
            raise ValueError(f"Pad: padding must be an int >= 0 or 4 ints, got {padding!r}")
        self.padding = pads
        self.fill = fill

    def __call__(self, img: Img) -> Img:
        if not any(self.padding):
            return img
        left, top, right, bottom = self.padding
        if isinstance(img, torch.Tensor):
            return F.pad(img, (left, right, top, bottom), value=float(self.fill))
        return ImageOps.expand(img, border=self.padding, fill=self.fill)

    def __repr__(self) -> str:
        return f"Pad(padding={self.padding}, fill={self.fill})"


class RandomCrop:
    """Crop a random ``(height, width)`` window (the image must be at least that big)."""

    def __init__(self, size: Sequence[int]) -> None:
        self.size = _size_pair(size, "RandomCrop")

    def __call__(self, img: Img) -> Img:
        h, w = self.size
        H, W = _hw(img)
        if h > H or w > W:
            raise ValueError(f"RandomCrop: image {H}x{W} (HxW) is smaller than the crop {h}x{w}")
        top = int(torch.randint(0, H - h + 1, ()).item())
        left = int(torch.randint(0, W - w + 1, ()).item())
        if isinstance(img, torch.Tensor):
            return img[..., top : top + h, left : left + w]
        return img.crop((left, top, left + w, top + h))

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size})"


class ToTensor:
    """PIL image (8-bit) -> float32 CHW tensor in [0, 1]."""

    def __call__(self, img: Image.Image) -> torch.Tensor:
        arr = np.asarray(img, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return torch.from_numpy(arr.transpose(2, 0, 1).copy()).float().div_(255.0)

    def __repr__(self) -> str:
        return "ToTensor()"


class Normalize:
    """``(x - mean) / std`` per channel of a CHW tensor (returns a new tensor)."""

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        if any(s <= 0 for s in std):
            raise ValueError(f"Normalize: std must be > 0, got {tuple(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(-1, 1, 1)
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class RandomErasing:
    """Random Erasing (Zhong et al. 2017, Alg. 1) on a CHW tensor.

    With probability ``p``, up to ``attempts`` times: draw an area fraction in ``[sl, sh]``
    and an aspect ratio in ``[r1, 1/r1]``; if the rectangle fits, fill it with ``mean`` (one
    value per channel) and stop. ``mean`` is written as given, in the tensor's own units: the
    default (ImageNet mean on the *normalised* tensor) is what the reference re-ID code (and
    the papers reproduced here) do; pass ``mean=(0, 0, 0)`` to fill with the mean pixel in
    normalised units.
    """

    def __init__(
        self,
        p: float = 0.5,
        sl: float = 0.02,
        sh: float = 0.4,
        r1: float = 0.3,
        mean: Sequence[float] = IMAGENET_MEAN,
        attempts: int = 100,
    ) -> None:
        if not 0 < sl <= sh <= 1 or not 0 < r1 <= 1:
            raise ValueError(
                f"RandomErasing: need 0 < sl <= sh <= 1 and 0 < r1 <= 1, "
                f"got sl={sl}, sh={sh}, r1={r1}"
            )
        self.p, self.sl, self.sh, self.r1 = float(p), float(sl), float(sh), float(r1)
        self.mean = tuple(float(m) for m in mean)
        self.attempts = int(attempts)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()).item() >= self.p:
            return x
        C, H, W = x.shape
        for _ in range(self.attempts):
            target = _uniform(self.sl, self.sh) * H * W
            aspect = _uniform(self.r1, 1.0 / self.r1)
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if 0 < h < H and 0 < w < W:
                top = int(torch.randint(0, H - h + 1, ()).item())
                left = int(torch.randint(0, W - w + 1, ()).item())
                x = x.clone()
                fill = torch.tensor(self.mean, dtype=x.dtype)
                if fill.numel() == 1:
                    fill = fill.expand(C)
                x[:, top : top + h, left : left + w] = fill.view(C, 1, 1)
                return x
        return x

    def __repr__(self) -> str:
        return (
            f"RandomErasing(p={self.p}, sl={self.sl}, sh={self.sh}, r1={self.r1}, mean={self.mean})"
        )


class RandomColorChange:
    """MSPLR's colour augmentation (sec. 3.6.1): with probability ``p``, either a brightness
    change (factor uniform in ``[1 - brightness, 1 + brightness]``) or a contrast change
    (factor in ``[1 - contrast, 1 + contrast]``), each chosen with probability 1/2.

    Takes a PIL image (PIL ``ImageEnhance``, as torchvision's PIL path) or a CHW tensor in
    [0, 1] (brightness: ``x * f``; contrast: blend with the mean grey level), clipped to range.
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.15, p: float = 0.5) -> None:
        if not (0 <= brightness < 1 and 0 <= contrast < 1):
            raise ValueError(
                f"RandomColorChange: brightness and contrast must be in [0, 1), "
                f"got {brightness}, {contrast}"
            )
        self.brightness, self.contrast, self.p = float(brightness), float(contrast), float(p)

    def sample(self) -> tuple[str, float] | None:
        """Draw one change: ``None`` (no change), or ``("brightness" | "contrast", factor)``."""
        if torch.rand(()).item() >= self.p:
            return None
        if torch.rand(()).item() < 0.5:
            return "brightness", _uniform(1 - self.brightness, 1 + self.brightness)
        return "contrast", _uniform(1 - self.contrast, 1 + self.contrast)

    @staticmethod
    def apply(img: Img, kind: str, factor: float) -> Img:
        """Apply a ``brightness`` or ``contrast`` change of ``factor``."""
        if isinstance(img, torch.Tensor):
            if kind == "brightness":
                return (img * factor).clamp_(0, 1)
            weights = torch.tensor([0.299, 0.587, 0.114], dtype=img.dtype).view(3, 1, 1)
            grey = (img * weights).sum(0).mean()
            return (factor * img + (1 - factor) * grey).clamp_(0, 1)
        enhancer = ImageEnhance.Brightness if kind == "brightness" else ImageEnhance.Contrast
        return enhancer(img).enhance(factor)

    def __call__(self, img: Img) -> Img:
        change = self.sample()
        return img if change is None else self.apply(img, *change)

    def __repr__(self) -> str:
        return (
            f"RandomColorChange(brightness={self.brightness}, contrast={self.contrast}, p={self.p})"
        )


@dataclass(frozen=True)
class Augmentation:
    """The training augmentation and the normalisation of :func:`build_transforms` (the
    augmentation fields apply to ``train=True`` only; ``mean`` / ``std`` to both)."""

    flip: bool = True
    """Random horizontal flip (probability 0.5)."""
    pad: int = 10
    """Zero padding in pixels, then a random crop back to the input size; 0: neither."""
    random_erasing: bool = True
    """Random erasing (Zhong et al. 2020) of a rectangle, filled with ``mean``."""
    color_change: bool = False
    """MSPLR section 3.6.1: brightness +-20% or contrast +-15%."""
    mean: Sequence[float] = IMAGENET_MEAN
    """Per-channel mean subtracted by the normalisation (RGB, in [0, 1])."""
    std: Sequence[float] = IMAGENET_STD
    """Per-channel standard deviation divided by the normalisation."""

    @classmethod
    def from_config(cls, d: Any) -> Augmentation:
        """From ``data.*`` (a :class:`~adaptreid.config.DataConfig`): ``flip``, ``pad``,
        ``random_erasing``, ``color_change``; the ImageNet mean and std."""
        return cls(
            flip=d.flip, pad=d.pad, random_erasing=d.random_erasing, color_change=d.color_change
        )


def build_transforms(
    height: int,
    width: int,
    train: bool,
    augmentation: Augmentation | None = None,
) -> Compose:
    """The standard re-ID pipeline. Test: resize, to tensor, normalise. Train adds flip,
    pad + random crop (``pad=0`` turns both off), MSPLR's colour change and random erasing
    (filled with ``mean``), as ``augmentation`` says (default: :class:`Augmentation`'s
    defaults, the values of ``data.*``'s defaults)."""
    aug = augmentation or Augmentation()
    steps: list[Callable[[Any], Any]] = [Resize((height, width))]
    if train:
        if aug.flip:
            steps.append(RandomHorizontalFlip())
        if aug.pad:
            steps += [Pad(aug.pad), RandomCrop((height, width))]
        if aug.color_change:
            steps.append(RandomColorChange())
    steps += [ToTensor(), Normalize(aug.mean, aug.std)]
    if train and aug.random_erasing:
        steps.append(RandomErasing(mean=aug.mean))
    return Compose(steps)
