"""Shared test fixtures: the ../shared data folder (optional) and tiny synthetic datasets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import adaptreid.methods  # noqa: F401  (registers the built-in methods, as the CLI does)
from adaptreid.cli import main

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session", autouse=True)
def _thread_registry(tmp_path_factory):
    """Keep the suite out of the machine's registry of live adaptreid processes
    (``adaptreid.runtime.threads``): the commands the tests run in this process and in child
    processes register in a folder of their own, so neither they nor an adaptreid run beside
    the suite count each other. One intra-op thread per process, as the tests set with
    ``torch.set_num_threads(1)`` (``test_threads.py`` unsets it where it tests the share),
    unless the developer's environment says otherwise."""
    from adaptreid.runtime import threads

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(threads.DIR_ENV, str(tmp_path_factory.mktemp("thread-registry")))
        if not os.environ.get(threads.ENV):
            mp.setenv(threads.ENV, "1")
        yield


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
    *,
    image: Callable[[str], Image.Image] | None = None,
) -> Path:
    """The one fake Market folder writer: ``bounding_box_train``, ``query`` and
    ``bounding_box_test`` under ``root`` with the given file names, in that order; each image
    is ``image(name)``, else a tiny solid-colour JPEG (colour = its index in its split).
    Returns ``root``."""
    for sub, names in (
        ("bounding_box_train", train),
        ("query", query),
        ("bounding_box_test", gallery),
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names):
            if image is None:
                write_jpeg(root / sub / name, color=i)
            else:
                image(name).save(root / sub / name)
    return root


def write_identity_market(
    root: Path, ids=(1, 2, 3, 4, 5, 6), test_ids=(20, 21, 22), seed: int = 0
) -> Path:
    """A Market folder to train on: images whose colour encodes the identity (plus noise),
    two cameras (camera 2 brighter); 2 training images per identity and camera, one query
    (camera 1) and two gallery images (camera 2) per test identity."""
    rng = np.random.default_rng(seed)

    def image(name: str) -> Image.Image:
        pid, cam = int(name[:4]), int(name[6])
        base = np.array([(pid * 40) % 256, (pid * 90) % 256, (pid * 150) % 256], float)
        arr = base + rng.normal(0, 20, (32, 16, 3)) + (15 if cam == 2 else 0)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))

    def names(pids, cams, n):
        return [f"{p:04d}_c{c}s1_{i:06d}_00.jpg" for p in pids for c in cams for i in range(n)]

    return write_market(
        root,
        names(ids, (1, 2), 2),
        names(test_ids, (1,), 1),
        names(test_ids, (2,), 2),
        image=image,
    )


# --------------------------------------------------------------------------------------------
# tiny runs shared by the method tests (source model, adaptation arguments, demo overrides)
# --------------------------------------------------------------------------------------------

COMMON = [
    "data.height=32",
    "data.width=16",
    "data.batch_size=8",
    "data.num_instances=2",
    "data.num_workers=0",
    "optim.warmup_epochs=1",
    "optim.milestones=[50]",
]


def train_tiny_source(tmp_path, *extra):
    src = write_identity_market(tmp_path / "src", ids=tuple(range(1, 9)))
    args = [
        "train",
        "--config",
        "configs/source/base.yaml",
        "-q",
        f"output_dir={tmp_path / 'runs'}",
        "name=src",
        "data.source=market1501",
        f"data.source_root={src}",
        "train.epochs=2",
        "model.backbone=resnet18",
        *COMMON,
        *extra,
    ]
    assert main(args) == 0
    return tmp_path / "runs" / "src" / "checkpoints" / "best.pt"


def adapt_args(tmp_path, ckpt, tgt, name, *extra):
    return [
        f"output_dir={tmp_path / 'runs'}",
        f"name={name}",
        "data.target=market1501",
        f"data.target_root={tgt}",
        f"adapt.init_checkpoint={ckpt}",
        "adapt.epochs_per_step=2",
        "adapt.max_steps=2",
        "adapt.patience=0",
        "method.freeze=inside_schedule",
        "train.freeze_epochs=1",
        "pseudo.method=kmeans",
        "pseudo.kmeans_k=8",
        "pseudo.min_size=2",
        *COMMON,
        *extra,
    ]


def past_args(tmp_path, ckpt, tgt, name, *extra):
    return [
        f"output_dir={tmp_path / 'runs'}",
        f"name={name}",
        "data.target=market1501",
        f"data.target_root={tgt}",
        f"adapt.init_checkpoint={ckpt}",
        "adapt.max_steps=2",
        *(c for c in COMMON if not c.startswith("optim.")),  # PAST has its own lrs
        "data.pad=0",
        "model.backbone=resnet18",  # the source checkpoint's trunk
        "model.head_options.num_parts=2",
        "model.head_options.parts=stripes",
        "model.embedding_dim=8",
        "pseudo.k1=6",
        "pseudo.k2=2",
        "pseudo.s_min=3",
        "method.eta=3",
        "method.conservative_epochs=1",
        "method.promoting_epochs=2",
        *extra,
    ]


def cc_args(tmp, ckpt, tgt, name, *extra):
    return [
        f"output_dir={tmp / 'runs'}",
        f"name={name}",
        "data.target=market1501",
        f"data.target_root={tgt}",
        f"adapt.init_checkpoint={ckpt}",
        "adapt.max_steps=2",
        "adapt.epochs_per_step=2",
        "data.height=32",
        "data.width=16",
        "data.batch_size=8",
        "data.num_instances=2",
        "data.num_workers=0",
        "data.pad=2",
        "pseudo.method=kmeans",
        "pseudo.kmeans_k=8",
        *extra,
    ]


def noise_jpeg(seed: int = 0) -> bytes:
    import io

    arr = np.random.default_rng(seed).integers(0, 256, (32, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def corrupt_jpeg() -> bytes:
    """A JPEG whose header is intact and whose last two thirds are overwritten."""
    data = bytearray(noise_jpeg(1))
    for i in range(len(data) // 3, len(data) - 2):
        data[i] = 0xFF if i % 2 else 0xD9
    return bytes(data)


#: `adaptreid demo` shrunk to seconds (the demo and README tests)
DEMO_TINY = [
    "data.source_options.preset=tiny",
    "data.target_options.preset=tiny",
    "data.num_workers=0",
    "train.epochs=2",
    "train.eval_every=1",
    "adapt.max_steps=2",
    "adapt.epochs_per_step=1",
    "train.freeze_epochs=0",
    "optim.warmup_epochs=0",
]
#: DEMO_TINY for an ``adaptreid adapt`` config (which refuses the source-only train.* keys)
DEMO_TINY_ADAPT = [x for x in DEMO_TINY if not x.startswith(("train.epochs=", "train.eval_every="))]


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

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("adapt")
    ckpt = train_tiny_source(tmp)
    tgt = write_identity_market(
        tmp / "tgt", ids=tuple(range(30, 38)), test_ids=(50, 51, 52), seed=5
    )
    return tmp, ckpt, tgt
