"""The built-in two-domain synthetic dataset (adaptreid.data.synthetic)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaptreid.data import build_dataset
from adaptreid.data.synthetic import (
    PRESETS,
    SyntheticSpec,
    camera_styles,
    generate_synthetic_reid,
    render_image,
    sample_identity,
)
from adaptreid.errors import DatasetError

TINY = SyntheticSpec.preset("tiny")


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _pixels(root: Path, sub: str = "bounding_box_train") -> dict[str, np.ndarray]:
    return {
        p.name: np.asarray(Image.open(p), dtype=np.float64) for p in sorted((root / sub).iterdir())
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("synthetic")
    return {
        d: generate_synthetic_reid(base / d, SyntheticSpec.preset("tiny", domain=d))
        for d in ("source", "target")
    }


# --------------------------------------------------------------------------------------------
# Layout, counts, parsing


@pytest.mark.parametrize("domain", ["source", "target"])
def test_layout_parses_with_the_market_parser(tiny, domain):
    root = tiny[domain]
    assert sorted(p.name for p in root.iterdir()) == [
        "README.txt",
        "bounding_box_test",
        "bounding_box_train",
        "query",
        "spec.json",
    ]
    ds = build_dataset("market1501", root)
    n, t, c, k = TINY.num_train_ids, TINY.num_test_ids, TINY.num_cameras, 2
    assert ds.summary() == {
        "train": {"images": n * c * k, "identities": n, "cameras": c},
        "query": {"images": t * c, "identities": t, "cameras": c},
        "gallery": {"images": t * c * (k - 1), "identities": t, "cameras": c},
    }
    assert TINY.counts() == {"train": n * c * k, "query": t * c, "gallery": t * c * (k - 1)}
    assert not ds.excluded
    train_pids = {s.pid for s in ds.train}
    test_pids = {s.pid for s in ds.query}
    assert train_pids == set(range(1, n + 1))
    assert test_pids == {s.pid for s in ds.gallery} == set(range(n + 1, n + t + 1))
    assert {s.camid for s in ds.train} == set(range(c))  # 0-based
    # every query has its identity in the gallery in another camera
    gallery = {(s.pid, s.camid) for s in ds.gallery}
    assert all(any((q.pid, cam) in gallery for cam in range(c) if cam != q.camid) for q in ds.query)
    readme = (root / "README.txt").read_text()
    assert f"({domain} domain)" in readme and "generate_synthetic_reid" in readme
    marker = json.loads((root / "spec.json").read_text())
    assert marker["spec"] == {**TINY.to_dict(), "domain": domain}


@pytest.mark.parametrize("domain", ["source", "target"])
def test_images_have_the_spec_size(tiny, domain):
    for p in (tiny[domain] / "query").iterdir():
        with Image.open(p) as img:
            assert (img.mode, img.size) == ("RGB", (TINY.width, TINY.height))


def test_registered_names_generate_then_reuse(tmp_path):
    root = tmp_path / "new" / "syn"  # parents are created
    ds = build_dataset("synthetic-target", root, preset="tiny", num_cameras=2)
    assert ds.name == "synthetic-target"
    assert ds.summary()["train"] == {"images": 8 * 2 * 2, "identities": 8, "cameras": 2}
    assert ds.summary()["gallery"]["images"] == 6 * 2
    assert not list(root.parent.glob(".*partial*"))  # the temporary folder is gone
    stamp = (root / "spec.json").stat().st_mtime_ns
    again = build_dataset("synthetic-target", root, preset="tiny", num_cameras=2)
    assert again.train == ds.train
    assert (root / "spec.json").stat().st_mtime_ns == stamp  # reused, not redrawn
    # another spec: our own folder is regenerated in place
    other = build_dataset("synthetic-target", root, preset="tiny", num_cameras=3, seed=1)
    assert other.summary()["train"]["cameras"] == 3
    assert json.loads((root / "spec.json").read_text())["spec"]["seed"] == 1
    src = build_dataset("syn-source", tmp_path / "src", preset="tiny")
    assert src.name == "synthetic-source" and len(src.query) == 6 * 3


def test_incomplete_folder_of_ours_is_redrawn(tmp_path):
    root = generate_synthetic_reid(tmp_path / "s", SyntheticSpec.preset("tiny"))
    victim = sorted((root / "query").iterdir())[0]
    victim.unlink()
    generate_synthetic_reid(root, SyntheticSpec.preset("tiny"))
    assert victim.is_file()


def test_never_touches_foreign_data(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    with pytest.raises(DatasetError, match="not empty"):
        build_dataset("synthetic-source", user, preset="tiny")
    assert (user / "notes.txt").read_text() == "precious"
    # our folder with a user's file inside: refused, nothing deleted
    root = generate_synthetic_reid(tmp_path / "ours", SyntheticSpec.preset("tiny"))
    (root / "query" / "holiday.jpg").write_bytes(b"x")
    before = _files(root)
    with pytest.raises(DatasetError, match="did not write"):
        generate_synthetic_reid(root, SyntheticSpec.preset("tiny", seed=5))
    assert _files(root) == before
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        generate_synthetic_reid(a_file, SyntheticSpec.preset("tiny"))


def test_spec_validation():
    with pytest.raises(DatasetError, match="domain"):
        SyntheticSpec(domain="photo")
    with pytest.raises(DatasetError, match="num_cameras"):
        SyntheticSpec(num_cameras=7)
    with pytest.raises(DatasetError, match="images_per_id_per_camera"):
        SyntheticSpec(images_per_id_per_camera=1)
    with pytest.raises(DatasetError, match="queries_per_id_per_camera"):
        SyntheticSpec(images_per_id_per_camera=3, queries_per_id_per_camera=3)
    with pytest.raises(DatasetError, match="camera_shift"):
        SyntheticSpec(camera_shift=2.0)
    with pytest.raises(DatasetError, match="unknown preset"):
        SyntheticSpec.preset("huge")
    with pytest.raises(DatasetError, match="unknown spec field"):
        SyntheticSpec.preset("demo", colour=3)
    demo = SyntheticSpec.preset("demo", domain="target")
    assert (demo.num_train_ids, demo.num_test_ids, demo.num_cameras) == (100, 50, 4)
    assert demo.counts() == {"train": 1200, "query": 200, "gallery": 400}
    assert set(PRESETS) >= {"demo", "tiny"}


# --------------------------------------------------------------------------------------------
# Determinism and speed


def test_same_seed_same_bytes_other_seed_other_images(tmp_path, tiny):
    again = generate_synthetic_reid(
        tmp_path / "again", SyntheticSpec.preset("tiny", domain="target")
    )
    assert _files(again) == _files(tiny["target"])
    other = generate_synthetic_reid(
        tmp_path / "other", SyntheticSpec.preset("tiny", domain="target", seed=3)
    )
    a, b = _files(tiny["target"]), _files(other)
    images = [k for k in a if k.endswith(".png")]
    assert set(images) <= set(b)  # same names ...
    assert sum(a[k] != b[k] for k in images) == len(images)  # ... every image differs


def test_identities_are_deterministic_and_varied():
    draw = [sample_identity(np.random.default_rng(i)) for i in range(200)]
    assert draw[0] == sample_identity(np.random.default_rng(0))
    assert len(set(draw)) == 200
    # a shared palette with small per-identity shifts: most people share their shirt colour
    # with someone else up to that shift (confusable), but no two are exactly alike
    shirts = np.array([d.shirt for d in draw])
    dist = np.linalg.norm(shirts[:, None] - shirts[None], axis=-1) + np.eye(len(draw))
    assert dist.min() > 0 and np.mean(dist.min(axis=1) < 0.1) > 0.8
    assert len({d.pattern for d in draw}) == 5 and len({d.lower for d in draw}) == 3
    assert len({d.bag for d in draw}) == 3


def test_concurrent_generation_into_one_folder(tmp_path):
    root = tmp_path / "shared"
    with ThreadPoolExecutor(2) as pool:
        paths = list(
            pool.map(
                lambda _: generate_synthetic_reid(root, SyntheticSpec.preset("tiny")), range(2)
            )
        )
    assert paths == [root, root]
    assert len(list((root / "query").iterdir())) == TINY.counts()["query"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]  # no partial folders left


def test_generation_is_fast(tmp_path):
    """CPU time of this process, not wall time (a loaded 2-core machine stretches the latter):
    ~2 ms per image; the bound is 10x that, so it only catches an accidental slow path."""
    spec = SyntheticSpec.preset("demo", num_train_ids=10, num_test_ids=5)  # 180 images, 64x32
    start = time.process_time()
    generate_synthetic_reid(
        tmp_path / "d", SyntheticSpec.preset("demo", num_train_ids=10, num_test_ids=5)
    )
    seconds = time.process_time() - start
    n = sum(spec.counts().values())
    assert n == 180
    assert seconds / n < 0.02, f"{1000 * seconds / n:.1f} ms of CPU per image"


# --------------------------------------------------------------------------------------------
# The domains look different (and identity survives)


def _camera_means(root: Path) -> dict[int, np.ndarray]:
    by_cam: dict[int, list[np.ndarray]] = {}
    for name, px in _pixels(root).items():
        cam = int(name.split("_c")[1][0])
        by_cam.setdefault(cam, []).append(px.reshape(-1, 3).mean(0))
    return {cam: np.mean(v, axis=0) for cam, v in by_cam.items()}


def test_target_is_darker_and_more_tinted_than_source(tiny):
    src, tgt = _camera_means(tiny["source"]), _camera_means(tiny["target"])
    src_brightness = np.mean([m.mean() for m in src.values()])
    tgt_brightness = np.mean([m.mean() for m in tgt.values()])
    assert tgt_brightness < 0.75 * src_brightness  # ~100 vs ~150 grey levels

    def tint(m: np.ndarray) -> float:  # chromaticity range: 0 for grey
        return float(np.ptp(m / m.sum()))

    # the first source camera is neutral; every target camera has a clear cast
    assert tint(src[1]) < 0.04 and min(tint(m) for m in tgt.values()) > 0.07
    assert np.mean([tint(m) for m in tgt.values()]) > 1.4 * np.mean([tint(m) for m in src.values()])

    # the target cameras differ from each other in colour more than the source cameras
    def spread(means: dict[int, np.ndarray]) -> float:
        chroma = np.stack([m / m.sum() for m in means.values()])
        return float(chroma.std(0).sum())

    assert spread(tgt) > 1.6 * spread(src)  # ~0.146 vs ~0.069


def test_target_is_blurrier_than_source(tiny):
    def sharpness(root: Path) -> float:
        return float(np.mean([np.abs(np.diff(p, axis=1)).mean() for p in _pixels(root).values()]))

    assert sharpness(tiny["target"]) < 0.6 * sharpness(tiny["source"])


def test_render_image_shows_identity_colours():
    # a person in a red shirt over a neutral source camera: the torso region is red
    rng = np.random.default_rng(0)
    ident = sample_identity(rng)
    ident = type(ident)(**{**ident.__dict__, "shirt": (0.8, 0.1, 0.1), "pattern": "plain",
                           "bag": "none", "long_hair": False})  # fmt: skip
    cam = camera_styles("source")[0]
    bg = np.full((128, 256, 3), 0.8, np.float32)
    img = render_image(ident, cam, bg, np.random.default_rng(1), 64, 32)
    assert img.dtype == np.uint8
    img = img.astype(float)
    assert img.shape == (64, 32, 3)
    chest = img[18:26, 13:19].reshape(-1, 3).mean(0)
    assert chest[0] > 120 and chest[1] < 60 and chest[2] < 60
    corner = img[2:6, 0:3].reshape(-1, 3).mean(0)
    assert np.all(np.abs(corner - 0.8 * 255) < 40)  # background


def test_camera_shift_scales_the_domain_gap(tmp_path):
    neutral = camera_styles("target", 0.0)
    assert all(c.gain == 1.0 and c.cast == (1.0, 1.0, 1.0) and c.blur == 0 for c in neutral)
    assert all(c.downsample == 1.0 for c in neutral)
    assert camera_styles("target", 1.0) == camera_styles("target")
    half = camera_styles("target", 0.5)[0]
    full = camera_styles("target")[0]
    assert half.gain == pytest.approx((1.0 + full.gain) / 2)
    assert half.view == full.view and half.texture == full.texture
    # a smaller shift gives brighter target images
    means = {}
    for shift in (0.3, 1.0):
        root = generate_synthetic_reid(
            tmp_path / str(shift), SyntheticSpec.preset("tiny", domain="target", camera_shift=shift)
        )
        means[shift] = np.mean([p.mean() for p in _pixels(root, "query").values()])
    assert means[0.3] > means[1.0] + 20


def test_registered_dataset_reuses_what_is_there_without_options(tmp_path):
    folder = tmp_path / "tgt"
    generate_synthetic_reid(folder, SyntheticSpec.preset("tiny", domain="target"))
    stamp = (folder / "spec.json").stat().st_mtime_ns
    ds = build_dataset("synthetic-target", folder)  # no option: the tiny dataset as it is
    assert len(ds.train) == 8 * 3 * 2 and (folder / "spec.json").stat().st_mtime_ns == stamp
    # an option that differs from what is there redraws it
    ds = build_dataset("synthetic-target", folder, preset="tiny", num_train_ids=5)
    assert len(ds.train) == 5 * 3 * 2
    # a source folder is never taken for the target
    from adaptreid.data.synthetic import _existing_spec

    generate_synthetic_reid(tmp_path / "src", SyntheticSpec.preset("tiny", domain="source"))
    assert _existing_spec(tmp_path / "src", "target") is None
    assert _existing_spec(tmp_path / "src", "source").num_train_ids == 8
