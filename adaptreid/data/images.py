"""Reading images robustly, and a torch ``Dataset`` over a list of samples.

:func:`read_image` always returns an 8-bit RGB :class:`PIL.Image.Image` or raises
:class:`~adaptreid.errors.DatasetError` naming the file:

- grayscale (``L``, ``1``), palette (``P``), ``CMYK``, ``YCbCr``, ... are converted to RGB;
- images with transparency (``RGBA``, ``LA``, ``PA``, palette with a transparent colour) are
  composited **onto black** (transparent background -> black, like zero padding);
- 16/32-bit integer images (``I;16*``, ``I``) are taken as 16-bit values and scaled to 8 bits
  (``round(v / 257)``, clipped to 0..65535 first); 32-bit float (``F``) is clipped to 0..255,
  as Pillow's own conversion does;
- missing, empty, unreadable, corrupt or truncated files raise; so do images larger than
  Pillow's decompression-bomb limit (``2 * PIL.Image.MAX_IMAGE_PIXELS`` pixels).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DatasetError
from .datasets import Sample

__all__ = ["ImageDataset", "read_image"]

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (see the module docstring for the rules)."""
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(img).astype(np.float64)
        gray = np.clip(np.rint(np.clip(values, 0, 65535) / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return img.convert("RGB")


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open ``path`` and return it as an 8-bit RGB PIL image (decoded now, file closed)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image file {path} does not exist")
    if path.stat().st_size == 0:
        raise DatasetError(f"image file {path} is empty (0 bytes)")
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img)
    except Image.DecompressionBombError as e:
        raise DatasetError(
            f"image {path} is too large to decode safely ({e}). If it is a genuine image, "
            f"downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS before loading"
        ) from e
    except UnidentifiedImageError as e:
        raise DatasetError(
            f"image file {path} is not a readable image (unknown format or corrupt header)"
        ) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"image file {path} is corrupt or truncated: {e}") from e


class ImageDataset(torch.utils.data.Dataset):
    """Images of a list of :class:`Sample`, through ``transform``.

    ``dataset[i]`` is ``{"img": transform(image), "pid": int, "camid": int, "index": i}``.
    With ``transform=None`` the image is the RGB PIL image (not collatable by a DataLoader).
    """

    def __init__(
        self, samples: Sequence[Sample], transform: Callable[[Image.Image], Any] | None = None
    ) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        img = read_image(sample.path)
        if self.transform is not None:
            img = self.transform(img)
        return {"img": img, "pid": int(sample.pid), "camid": int(sample.camid), "index": index}

    def __repr__(self) -> str:
        return f"ImageDataset({len(self)} samples, transform={self.transform!r})"
