"""Shared test fixtures: the ../shared data folder (optional) and tiny synthetic datasets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from PIL import Image

import adaptreid.methods  # noqa: F401  (registers the built-in methods, as the CLI does)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def require_shared(relpath: str) -> Path:
    """``SHARED / relpath``, or skip the test when it is absent."""
    path = SHARED / relpath
    if not path.exists():
        pytest.skip(f"needs ../shared/{relpath} (absent)")
    return path


@pytest.fixture
def shared_dir() -> Path:
    """The ../shared folder (skips when absent)."""
    if not SHARED.is_dir():
        pytest.skip("needs ../shared (absent)")
    return SHARED


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict[str, str]:
    """The environment of a test's child process: this checkout importable, one thread per
    process, no leftover torch.distributed variables."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def torchrun(worker: Path, *args: object, nproc: int = 2, timeout: int = 600):
    """Run ``worker`` under ``torch.distributed.run`` with ``nproc`` CPU (gloo) processes;
    returns the completed process (stdout / stderr captured)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
        str(worker),
        *map(str, args),
    ]
    return subprocess.run(
        cmd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )


def write_jpeg(path: Path, size: tuple[int, int] = (8, 16), color: int = 0) -> Path:
    """A tiny solid-colour JPEG of ``size`` = (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (color % 256, (3 * color) % 256, (7 * color) % 256)).save(path)
    return path


# Default synthetic Market layout: 4 train ids x 2 cameras x 2 images, 2 test ids, junk and a
# distractor in the gallery.
MARKET_TRAIN = [
    f"{pid:04d}_c{cam}s1_{i:06d}_01.jpg" for pid in (2, 7, 9, 12) for cam in (1, 2) for i in (1, 2)
]
MARKET_QUERY = ["0003_c1s1_000001_00.jpg", "0005_c2s1_000001_00.jpg"]
MARKET_GALLERY = [
    "0003_c2s1_000002_01.jpg",
    "0005_c1s1_000002_01.jpg",
    "0000_c3s1_000003_01.jpg",
    "-1_c1s1_000004_01.jpg",
    "-1_c3s1_000005_01.jpg",
]


def write_market(
    root: Path,
    train: Iterable[str] = MARKET_TRAIN,
    query: Iterable[str] = MARKET_QUERY,
    gallery: Iterable[str] = MARKET_GALLERY,
) -> Path:
    """Write a Market-style folder (``bounding_box_train``, ``query``, ``bounding_box_test``)
    of tiny JPEGs with the given file names under ``root``; returns ``root``."""
    for sub, names in (
        ("bounding_box_train", train),
        ("query", query),
        ("bounding_box_test", gallery),
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names):
            write_jpeg(root / sub / name, color=i)
    return root


@pytest.fixture
def make_market(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_market(name="Market-1501-v15.09.15", train=..., ...)`` writes a
    synthetic Market-style folder ``tmp_path/name`` and returns it."""

    def make(name: str = "Market-1501-v15.09.15", **names: Iterable[str]) -> Path:
        return write_market(tmp_path / name, **names)

    return make


@pytest.fixture(scope="module")
def tiny_adaptation(tmp_path_factory):
    """``(tmp, checkpoint, target)``: a ResNet-18 source model trained for 2 epochs on a tiny
    Market-style folder, and a tiny target folder (8 train identities, 3 test identities),
    shared by the tests of a module."""
    import torch
    from test_msplr import _source
    from test_train import _write_market

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("adapt")
    ckpt = _source(tmp)
    tgt = _write_market(tmp / "tgt", ids=tuple(range(30, 38)), test_ids=(50, 51, 52), seed=5)
    return tmp, ckpt, tgt
