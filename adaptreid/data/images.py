"""Reading images robustly, and a torch ``Dataset`` over a list of samples.

:func:`read_image` always returns an 8-bit RGB :class:`PIL.Image.Image` or raises
:class:`~adaptreid.errors.DatasetError` naming the file:

- grayscale (``L``, ``1``), palette (``P``), ``CMYK``, ``YCbCr``, ... are converted to RGB;
- images with transparency (``RGBA``, ``LA``, ``PA``, palette with a transparent colour) are
  composited **onto black** (transparent background -> black, like zero padding);
- 16/32-bit integer images (``I;16*``, ``I``) are taken as 16-bit values and scaled to 8 bits
  (``round(v / 257)``, clipped to 0..65535 first); 32-bit float (``F``) is clipped to 0..255,
  as Pillow's own conversion does;
- missing, empty, unreadable, corrupt or truncated files raise :class:`ImageReadError`;
  so do images larger than Pillow's decompression-bomb limit
  (``2 * PIL.Image.MAX_IMAGE_PIXELS`` pixels).

:class:`ImageDataset` either raises on such a file (``bad_images="error"``) or returns the
item marked bad (``bad_images="skip"``) for the loaders to drop and report.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DatasetError
from .datasets import Sample

__all__ = ["BAD_IMAGE_MODES", "ImageDataset", "ImageReadError", "image_problem", "read_image"]

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


class ImageReadError(DatasetError):
    """An image file that cannot be read. ``path`` is the file and ``reason`` a short
    description without the path ("is empty (0 bytes)", "is corrupt or truncated: ...");
    the message is ``image file <path> <reason>``. Raised by :func:`read_image`."""

    def __init__(self, message: str, *, path: str = "", reason: str = "") -> None:
        # a single positional argument: DataLoader workers re-raise errors as type(message)
        super().__init__(message)
        self.path = str(path)
        self.reason = reason or message


def _fail(path: Path, reason: str, message: str | None = None) -> ImageReadError:
    return ImageReadError(message or f"image file {path} {reason}", path=str(path), reason=reason)


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open ``path`` and return it as an 8-bit RGB PIL image (decoded now, file closed).

    Raises :class:`ImageReadError` (a :class:`DatasetError`) naming the file."""
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "does not exist")
    if path.stat().st_size == 0:
        raise _fail(path, "is empty (0 bytes)")
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img)
    except Image.DecompressionBombError as e:
        raise _fail(
            path,
            f"is too large to decode safely ({e})",
            f"image {path} is too large to decode safely ({e}). If it is a genuine image, "
            f"downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS before loading",
        ) from e
    except UnidentifiedImageError as e:
        raise _fail(path, "is not a readable image (unknown format or corrupt header)") from e
    except PermissionError as e:
        raise _fail(path, f"cannot be read (permission denied: {e.strerror})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise _fail(path, f"is corrupt or truncated: {e}") from e
    except Exception as e:  # any other decoder failure (EOFError, struct.error, ...)
        raise _fail(path, f"could not be decoded ({type(e).__name__}: {e})") from e


def image_problem(path: str | os.PathLike[str]) -> str | None:
    """``None`` if ``path`` decodes as an image, else the reason it does not (the
    :attr:`ImageReadError.reason` of :func:`read_image`). Used by ``adaptreid data check``."""
    try:
        read_image(path)
    except ImageReadError as e:
        return e.reason
    return None


BAD_IMAGE_MODES = ("error", "skip")


class CachedImages(Protocol):
    """What :class:`ImageDataset` needs of an image cache
    (:class:`~adaptreid.data.image_cache.ImageCache`, which imports this module)."""

    def check_transform(self, transform: Any) -> None:
        """Raise ``ValueError`` unless ``transform`` begins with the cache's resize."""

    def register(self, paths: Sequence[str]) -> Any:
        """The rows of ``paths`` (a :class:`~adaptreid.data.image_cache.CacheRows`)."""

    def load(self, path: str, row: int, seed: int) -> Image.Image:
        """The image of ``path`` resized, from ``row`` or decoded."""


class ImageDataset(torch.utils.data.Dataset):
    """Images of a list of :class:`Sample`, through ``transform``.

    ``dataset[i]`` is ``{"img": transform(image), "pid": int, "camid": int, "index": i}``.
    With ``transform=None`` the image is the RGB PIL image (not collatable by a DataLoader).

    ``bad_images`` says what an unreadable image does (missing, empty, corrupt, truncated,
    not an image, too large):

    - ``"error"`` (default): :func:`read_image` raises :class:`ImageReadError` naming the file
      (inside a DataLoader worker, the loader re-raises it);
    - ``"skip"``: nothing is raised; the item comes back *marked bad*:
      ``{"img": None, "pid", "camid", "index": i, "path": path, "bad": reason}``. The
      collate function of the project's loaders (:func:`adaptreid.data.loaders.collate_skip_bad`)
      drops such items from the batch and lists them in ``batch["bad"]``.

    An error raised by ``transform`` itself is never skipped (it is a bug, not bad data).

    ``image_cache`` (an :class:`~adaptreid.data.image_cache.ImageCache`): images come from
    it, decoded and resized once, then go through ``transform`` whole. ``transform`` must
    begin with the cache's :class:`~adaptreid.data.transforms.Resize` (as
    :func:`~adaptreid.data.transforms.build_transforms`' do), which the cached image then
    passes unchanged: the items are exactly those without the cache.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        bad_images: str = "error",
        image_cache: CachedImages | None = None,
    ) -> None:
        if bad_images not in BAD_IMAGE_MODES:
            raise ValueError(f"bad_images must be 'error' or 'skip', got {bad_images!r}")
        self.samples = list(samples)
        self.transform = transform
        self.bad_images = bad_images
        self.image_cache = image_cache
        self._cache_rows = None
        if image_cache is not None:
            image_cache.check_transform(transform)
            self._cache_rows = image_cache.register([s.path for s in self.samples])

    def _read(self, index: int) -> Image.Image:
        path = self.samples[index].path
        if self.image_cache is None or self._cache_rows is None:
            return read_image(path)
        rows = self._cache_rows
        return self.image_cache.load(path, int(rows.rows[index]), int(rows.seeds[index]))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        try:
            img = self._read(index)
        except ImageReadError as e:
            if self.bad_images == "error":
                raise
            return {
                "img": None,
                "pid": int(sample.pid),
                "camid": int(sample.camid),
                "index": index,
                "path": sample.path,
                "bad": e.reason,
            }
        if self.transform is not None:
            img = self.transform(img)
        return {"img": img, "pid": int(sample.pid), "camid": int(sample.camid), "index": index}

    def __repr__(self) -> str:
        cache = f", image_cache={self.image_cache!r}" if self.image_cache is not None else ""
        return (
            f"ImageDataset({len(self)} samples, transform={self.transform!r}, "
            f"bad_images={self.bad_images!r}{cache})"
        )
