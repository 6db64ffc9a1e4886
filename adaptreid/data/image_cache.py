"""Decoded images at the input size, kept on disk so that each JPEG is decoded once (issue 27).

Feature extraction and evaluation go over the same images at every adaptation step, and
decoding them again each time costs a large share of a pass. :class:`ImageCache` keeps, per
input size ``(height, width)``, one memory-mapped file of uint8 RGB rows: the image as
:func:`~adaptreid.data.images.read_image` decodes it, after the deterministic
:class:`~adaptreid.data.transforms.Resize` to that size, before anything random (flip, crop,
erasing) and before the tensor conversion and normalisation. A loader's transform still runs
whole on the cached image (its ``Resize`` is then the identity), so a cached pass returns
exactly the tensors of a pass that decodes, with or without augmentation after the resize.

Files, in the cache's folder (``data.image_cache_dir``), per size::

    images_<H>x<W>.v1.keys   one JSON string per line, a file's key; line i is row i
    images_<H>x<W>.v1.u8     the rows: 8 header bytes + H * W * 3 pixel bytes each

A key is the absolute path with the file's size and modification time, so a file changed in
place gets a new row. Rows are only ever appended (under an ``fcntl`` lock, by the process
that builds a loader), and the data file is allocated for them at once, so a full disk shows
up there (the images are then decoded as before), never as a failed write into the mapping.

A row's header is a 4-byte flag and the CRC32 of the row's key and pixels. A writer clears
the flag, writes the pixels, the checksum, then the flag; a reader serves the row only when
the flag is set and the checksum matches. A process killed in the middle of a write (or a
machine that lost a page) therefore never serves a torn row: the image is decoded again and
the row rewritten. Two runs that share a folder write the same bytes to the same row.

DataLoader workers receive the cache pickled without its mapping and open the file lazily,
once per process. An unreadable image is never cached: it raises
:class:`~adaptreid.data.images.ImageReadError` at every pass, as without the cache, and the
loader's ``bad_images`` mode decides what happens.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .images import read_image
from .transforms import Resize

try:  # POSIX; elsewhere two processes registering files at once are not supported
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["CacheRows", "ImageCache", "file_key"]

log = logging.getLogger("adaptreid")

_FLAG = np.frombuffer(b"ARC1", dtype=np.uint8)
_HEADER = 8


def file_key(path: str | os.PathLike[str]) -> str | None:
    """The cache key of ``path``: ``"<absolute path>\\t<size>\\t<mtime_ns>"``, or None for a
    path that is not a non-empty regular file (never cached: it is decoded, and fails, as
    without a cache)."""
    p = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(p)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
        return None
    return f"{p}\t{st.st_size}\t{st.st_mtime_ns}"


@dataclass(frozen=True)
class CacheRows:
    """Where the images of a sample list are in an :class:`ImageCache`: ``rows[i]`` (-1: not
    cached) and ``seeds[i]``, the CRC32 of image i's key, which its row's checksum continues."""

    rows: np.ndarray
    seeds: np.ndarray


class ImageCache:
    """The decoded images at ``(height, width)`` in ``folder`` (see the module docstring).

    ``register(paths)`` (the process that builds the loader) gives the rows of a sample list;
    ``load(path, row, seed)`` (any process) returns the resized RGB image, from its row when
    the row is valid, else decoded (then written to the row). ``hits`` / ``misses`` count
    this process's loads served from rows / decoded."""

    def __init__(self, folder: str | os.PathLike[str], height: int, width: int) -> None:
        self.folder = Path(folder)
        self.height, self.width = int(height), int(width)
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"ImageCache: size must be positive, got {height}x{width}")
        self.resize = Resize((self.height, self.width))
        self.row_bytes = _HEADER + self.height * self.width * 3
        stem = f"images_{self.height}x{self.width}.v1"
        self.keys_path = self.folder / f"{stem}.keys"
        self.data_path = self.folder / f"{stem}.u8"
        self.hits = 0
        self.misses = 0
        self._rows: dict[str, int] = {}
        self._lines = 0
        self._offset = 0
        self._mm: np.memmap | None = None
        self._pid = -1

    # ------------------------------------------------------------------ pickling (workers)
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_mm=None, _pid=-1, _rows={}, _lines=0, _offset=0, hits=0, misses=0)
        return state

    def __repr__(self) -> str:
        return f"ImageCache({str(self.folder)!r}, {self.height}x{self.width})"

    def check_transform(self, transform: object) -> None:
        """A cached image is already resized: ``transform`` must begin with the very resize
        the cache applies (as :func:`~adaptreid.data.transforms.build_transforms`' do), else
        its items would differ from those of a loader without the cache. Raises
        ``ValueError``."""
        steps = getattr(transform, "transforms", None)
        first = steps[0] if steps else None
        if not (
            type(first) is type(self.resize)
            and first.size == self.resize.size
            and first.interpolation == self.resize.interpolation
        ):
            raise ValueError(
                f"{self!r}: the transform must begin with {self.resize!r} (bilinear), as "
                f"build_transforms' do; got {transform!r}"
            )

    # ------------------------------------------------------------------ rows
    def register(self, paths: Sequence[str | os.PathLike[str]]) -> CacheRows:
        """The rows of ``paths``, appending those not in the cache yet (under a file lock,
        safe with other processes and runs). A path that is not a readable file gets row -1;
        so do new ones when the disk cannot hold their rows, and all when the folder cannot
        be written (a warning says so)."""
        keys = [file_key(p) for p in paths]
        try:
            self._append(keys)
        except OSError as e:
            log.warning("image cache %s cannot be used (%s): images are decoded", self.folder, e)
            self._rows = {}
        rows = np.array([self._rows.get(k, -1) if k else -1 for k in keys], dtype=np.int64)
        seeds = np.array([zlib.crc32(k.encode()) if k else 0 for k in keys], dtype=np.uint32)
        return CacheRows(rows, seeds)

    def _append(self, keys: list[str | None]) -> None:
        """Read the key file and append the keys it lacks, under its lock."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.keys_path, "a+b") as f:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                self._read_keys(f)
                known = self._lines
                new = [k for k in dict.fromkeys(k for k in keys if k) if k not in self._rows]
                # (also restores the rows of a data file deleted under a kept key file)
                if self._allocate(known + len(new)) and new:
                    f.seek(0, os.SEEK_END)
                    f.write(b"".join(json.dumps(k).encode() + b"\n" for k in new))
                    f.flush()
                    self._read_keys(f)
            finally:
                if fcntl is not None:
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _read_keys(self, f) -> None:
        """Read the lines appended since the last read; a last line without its newline (a
        writer killed mid-line) is cut off (the caller holds the lock)."""
        f.seek(self._offset)
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            f.truncate(self._offset + end)
        for line in data[:end].splitlines():
            try:
                key = json.loads(line)
            except ValueError:
                key = None  # a damaged line keeps its row number; no key finds it
            if isinstance(key, str):
                self._rows.setdefault(key, self._lines)
            self._lines += 1
        self._offset += end

    def _allocate(self, rows: int) -> bool:
        """Make the data file hold ``rows`` rows (disk space reserved now). False if the
        disk cannot hold them (the file is left as it was)."""
        size = rows * self.row_bytes
        fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            old = os.fstat(fd).st_size
            if old >= size:
                return True
            try:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fd, old, size - old)
                else:  # pragma: no cover - no posix_fallocate (macOS, Windows)
                    os.ftruncate(fd, size)
            except OSError as e:
                os.ftruncate(fd, old)
                log.warning(
                    "image cache %s: no room for %d more rows (%s); those images are decoded "
                    "at every pass",
                    self.data_path,
                    rows - old // self.row_bytes,
                    e,
                )
                return False
            return True
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ reading, writing
    def _map(self, row: int) -> np.memmap | None:
        """The mapping of the data file, opened in this process (again when the file has
        grown past it); None if it does not hold ``row``."""
        if self._mm is None or self._pid != os.getpid() or row >= self._mm.shape[0]:
            self._mm = None
            try:
                n = os.path.getsize(self.data_path) // self.row_bytes
            except OSError:
                return None
            if row >= n:
                return None
            shape = (n, self.row_bytes)
            try:
                self._mm = np.memmap(self.data_path, np.uint8, "r+", 0, shape)
            except OSError:
                return None
            self._pid = os.getpid()
        return self._mm

    def get(self, row: int, seed: int) -> np.ndarray | None:
        """The pixels of ``row`` (H x W x 3 uint8, a copy) if the row is valid: its flag set
        and its checksum that of ``seed`` (its key's CRC32) and its pixels; else None."""
        mm = self._map(row)
        if mm is None:
            return None
        buf = np.array(mm[row])
        if not np.array_equal(buf[:4], _FLAG):
            return None
        pixels = buf[_HEADER:]
        (crc,) = struct.unpack("<I", buf[4:_HEADER].tobytes())
        if zlib.crc32(pixels, int(seed)) != crc:
            return None
        return pixels.reshape(self.height, self.width, 3)

    def put(self, row: int, seed: int, pixels: np.ndarray) -> None:
        """Write ``pixels`` (H x W x 3 uint8) to ``row``: flag cleared, pixels, checksum,
        flag set (see the module docstring)."""
        mm = self._map(row)
        if mm is None:
            return
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        if pixels.shape != (self.height, self.width, 3):
            raise ValueError(
                f"{self}: pixels of shape {pixels.shape}, expected {(self.height, self.width, 3)}"
            )
        r = mm[row]
        r[:4] = 0
        r[_HEADER:] = pixels.reshape(-1)
        crc = zlib.crc32(pixels, int(seed))
        r[4:_HEADER] = np.frombuffer(struct.pack("<I", crc), dtype=np.uint8)
        r[:4] = _FLAG

    def load(self, path: str | os.PathLike[str], row: int, seed: int) -> Image.Image:
        """``path`` as an RGB image at the cache's size: from ``row`` when it is valid, else
        decoded (:func:`read_image`, which raises
        :class:`~adaptreid.data.images.ImageReadError` for an unreadable file), resized and
        written to ``row``. ``row`` -1: decoded and resized, not cached."""
        if row >= 0:
            pixels = self.get(row, seed)
            if pixels is not None:
                self.hits += 1
                return Image.fromarray(pixels)
        img = self.resize(read_image(path))
        self.misses += 1
        if row >= 0:
            self.put(row, seed, np.asarray(img, dtype=np.uint8))
        return img
