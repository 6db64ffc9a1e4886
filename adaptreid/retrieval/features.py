"""Features files: what ``adaptreid embed`` writes and ``adaptreid search`` reads.

A ``.npz`` file (NumPy, no pickle) with the arrays

* ``features``: ``(N, D)`` float32, L2-normalised as the model's retrieval feature;
* ``paths``: ``(N,)`` str, the image files;
* ``camids``: ``(N,)`` int64, camera ids (``-1``: unknown);
* ``pids``: ``(N,)`` int64, identities, only when the images have them (``-1``: unknown);
* ``fingerprint``: the model's identity (:func:`model_fingerprint`); features of two models
  are not comparable, so a file whose fingerprint is not the model's is refused;
* ``meta``: JSON text (checkpoint, backbone, input size, feature size, flip, metric).

With ``.parquet`` as the suffix (needs ``pyarrow``) the same columns are written as a table
(``features`` a list column), and the fingerprint and ``meta`` go in the schema's metadata.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AdaptReIDError

__all__ = ["FeatureSet", "FeaturesFileError", "load_features", "model_fingerprint"]

FORMAT = "adaptreid-features-1"


class FeaturesFileError(AdaptReIDError, ValueError):
    """A features file that cannot be read, or that another model wrote."""


def model_fingerprint(state_dict: dict, *, config_name: str, feat_dim: int) -> str:
    """``<config name>-<feature size>-<16 hex digits>``: a SHA-256 of the weights (every
    tensor's name, dtype, shape and bytes, in sorted order), the config name and the feature
    size. Two checkpoints with the same weights have the same fingerprint wherever they lie."""
    h = hashlib.sha256()
    h.update(f"{config_name}\0{feat_dim}\0".encode())
    for key in sorted(state_dict):
        t = state_dict[key]
        if not hasattr(t, "detach"):
            continue
        arr = t.detach().cpu().contiguous().numpy()
        h.update(f"{key}\0{arr.dtype}\0{arr.shape}\0".encode())
        h.update(arr.tobytes())
    return f"{config_name}-{feat_dim}-{h.hexdigest()[:16]}"


@dataclass
class FeatureSet:
    """Features of a list of images, row ``i`` for ``paths[i]``."""

    features: np.ndarray
    paths: list[str]
    camids: np.ndarray
    fingerprint: str
    pids: np.ndarray | None = None
    """Identities when known (every image labelled), else None."""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.features = np.ascontiguousarray(self.features, dtype=np.float32)
        self.camids = np.asarray(self.camids, dtype=np.int64)
        if self.pids is not None:
            self.pids = np.asarray(self.pids, dtype=np.int64)
        n = len(self.paths)
        if self.features.ndim != 2 or len(self.features) != n or len(self.camids) != n:
            raise ValueError(
                f"features {self.features.shape}, {n} paths and {len(self.camids)} camids "
                "do not line up"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` (``.npz``, or ``.parquet`` with pyarrow), atomically."""
        path = Path(path)
        if path.suffix == ".parquet":
            return self._save_parquet(path)
        if path.suffix != ".npz":
            raise FeaturesFileError(
                f"{path}: features files end in .npz (or .parquet, with pyarrow installed)"
            )
        arrays: dict[str, np.ndarray] = {
            "features": self.features,
            "paths": np.asarray(self.paths, dtype=str),
            "camids": self.camids,
            "fingerprint": np.asarray(self.fingerprint),
            "meta": np.asarray(json.dumps({"format": FORMAT, **self.meta})),
        }
        if self.pids is not None:
            arrays["pids"] = self.pids
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        _atomic_write(path, buf.getvalue())
        return path

    def _save_parquet(self, path: Path) -> Path:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise FeaturesFileError(
                f"{path}: writing Parquet needs pyarrow (pip install pyarrow); "
                "or write .npz, which needs nothing more"
            ) from None
        cols = {
            "path": pa.array(self.paths, pa.string()),
            "camid": pa.array(self.camids),
            "features": pa.array(list(self.features), pa.list_(pa.float32())),
        }
        if self.pids is not None:
            cols["pid"] = pa.array(self.pids)
        table = pa.table(cols).replace_schema_metadata(
            {
                "adaptreid.fingerprint": self.fingerprint,
                "adaptreid.meta": json.dumps({"format": FORMAT, **self.meta}),
            }
        )
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        _atomic_write(path, buf.getvalue().to_pybytes())
        return path


def load_features(path: str | Path) -> FeatureSet:
    """Read a features file written by :meth:`FeatureSet.save`; a missing, foreign or damaged
    file raises :class:`FeaturesFileError` saying which."""
    path = Path(path)
    if not path.is_file():
        raise FeaturesFileError(f"features file {path} does not exist")
    if path.suffix == ".parquet":
        return _load_parquet(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise FeaturesFileError(
            f"{path} is not a features file written by adaptreid embed ({e})"
        ) from None
    missing = [k for k in ("features", "paths", "camids", "fingerprint") if k not in data]
    if missing:
        raise FeaturesFileError(
            f"{path} is not a features file written by adaptreid embed "
            f"(no {', '.join(missing)} in it; found {', '.join(sorted(data)) or 'nothing'})"
        )
    meta = json.loads(str(data["meta"])) if "meta" in data else {}
    return FeatureSet(
        data["features"],
        [str(p) for p in data["paths"]],
        data["camids"],
        str(data["fingerprint"]),
        pids=data.get("pids"),
        meta=meta,
    )


def _load_parquet(path: Path) -> FeatureSet:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise FeaturesFileError(
            f"{path}: reading Parquet needs pyarrow (pip install pyarrow)"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as e:
        raise FeaturesFileError(f"{path} is not a readable Parquet file ({e})") from None
    md = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if "adaptreid.fingerprint" not in md:
        raise FeaturesFileError(f"{path} is not a features file written by adaptreid embed")
    cols = table.to_pydict()
    return FeatureSet(
        np.asarray(cols["features"], dtype=np.float32).reshape(len(cols["path"]), -1),
        cols["path"],
        cols["camid"],
        md["adaptreid.fingerprint"],
        pids=cols.get("pid"),
        meta=json.loads(md.get("adaptreid.meta", "{}")),
    )


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
