"""The decoded-image cache (issue 27 item 1, adaptreid/data/image_cache.py): loaders that
read from it give exactly the tensors of loaders that decode (test transform, extraction with
flip averaging, training augmentation), on the first pass (which fills it) and on the next
(which reads it); a torn row is decoded again; sizes keep separate files; DataLoader workers
share it; unreadable images keep the bad-image handling; ``data.image_cache`` is checked when
the config loads; a run gives the same records with and without it and removes its own."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import corrupt_jpeg, train_tiny_source
from PIL import Image

from adaptreid.config import load_config
from adaptreid.data import ImageCache, build_test_loader, build_transforms
from adaptreid.data.datasets import Sample
from adaptreid.data.image_cache import file_key
from adaptreid.data.images import ImageDataset, ImageReadError
from adaptreid.data.loaders import PKSampling, build_train_loader
from adaptreid.data.transforms import Augmentation
from adaptreid.engine.builders import image_cache_dir, remove_run_image_cache
from adaptreid.engine.extract import extract_features
from adaptreid.errors import ConfigError
from adaptreid.models import build_model

H, W = 32, 16


def _images(folder, n=12, seed=0):
    """``n`` noise images of assorted sizes (none at H x W, so every one is resized), as
    samples with 3 identities and 2 cameras; JPEG and PNG."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        h, w = 40 + 3 * i, 18 + i
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        path = folder / f"{i:03d}.{'png' if i % 4 == 3 else 'jpg'}"
        Image.fromarray(arr).save(path)
        out.append(Sample(str(path), i % 3, i % 2))
    return out


def _all(loader, key="img"):
    return torch.cat([b[key] for b in loader])


def _test_tensors(samples, cache=None, num_workers=0, size=(H, W)):
    tf = build_transforms(*size, train=False)
    return _all(build_test_loader(samples, tf, 5, num_workers, image_cache=cache))


def test_first_pass_fills_second_pass_reads_same_tensors(tmp_path):
    samples = _images(tmp_path / "img")
    ref = _test_tensors(samples)
    cache = ImageCache(tmp_path / "cache", H, W)
    first = _test_tensors(samples, cache)
    assert (cache.hits, cache.misses) == (0, len(samples))
    second = _test_tensors(samples, cache)
    assert (cache.hits, cache.misses) == (len(samples), len(samples))
    assert torch.equal(first, ref) and torch.equal(second, ref)
    # a new process (a new cache object, nothing in memory) reads the same rows
    again = ImageCache(tmp_path / "cache", H, W)
    assert torch.equal(_test_tensors(samples, again), ref)
    assert (again.hits, again.misses) == (len(samples), 0)


@pytest.mark.parametrize("flip", [False, True])
def test_extracted_features_equal_with_and_without_cache(tmp_path, flip):
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=3).eval()
    samples = _images(tmp_path / "img")
    tf = build_transforms(H, W, train=False)

    def feats(cache):
        loader = build_test_loader(samples, tf, 4, 0, image_cache=cache)
        return extract_features(model, loader, flip=flip, verbose=False).feats

    ref = feats(None)
    cache = ImageCache(tmp_path / "cache", H, W)
    assert torch.equal(feats(cache), ref)  # filling
    assert torch.equal(feats(cache), ref)  # reading
    assert cache.hits == len(samples)


def test_training_augmentation_is_unchanged(tmp_path):
    """The cache holds the resized image only: flip, pad + crop, colour change and random
    erasing still draw at every pass, the same draws as without the cache."""
    samples = _images(tmp_path / "img", n=12)
    aug = Augmentation(flip=True, pad=4, random_erasing=True, color_change=True)
    tf = build_transforms(H, W, train=True, augmentation=aug)
    cache = ImageCache(tmp_path / "cache", H, W)

    def batches(c):
        torch.manual_seed(3)
        loader = build_train_loader(samples, tf, PKSampling(3, 2, seed=1), image_cache=c)
        loader.sampler.set_epoch(0)
        return [(b["img"], b["index"]) for b in loader]

    ref = batches(None)
    for _ in range(2):  # filling, then reading
        out = batches(cache)
        assert len(out) == len(ref)
        for (x, i), (rx, ri) in zip(out, ref):
            assert torch.equal(i, ri) and torch.equal(x, rx)
    assert cache.hits > 0


def _data_row(cache, row):
    return np.memmap(cache.data_path, np.uint8, "r+", row * cache.row_bytes, (cache.row_bytes,))


def test_torn_row_is_decoded_again_and_rewritten(tmp_path):
    samples = _images(tmp_path / "img", n=6)
    ref = _test_tensors(samples)
    _test_tensors(samples, ImageCache(tmp_path / "cache", H, W))
    # row 2: flag set, one pixel changed (as if a write was cut off): checksum wrong
    cache = ImageCache(tmp_path / "cache", H, W)
    rows = cache.register([s.path for s in samples]).rows
    r = _data_row(cache, int(rows[2]))
    assert bytes(r[:4]) == b"ARC1"
    r[100] ^= 0xFF
    # row 4: pixels intact, flag not yet set (killed before the last write)
    r4 = _data_row(cache, int(rows[4]))
    r4[:4] = 0
    r.flush(), r4.flush()
    del r, r4
    out = _test_tensors(samples, cache)
    assert torch.equal(out, ref)
    assert (cache.hits, cache.misses) == (len(samples) - 2, 2)
    # both rows were written again, whole: the next pass reads all
    fresh = ImageCache(tmp_path / "cache", H, W)
    assert torch.equal(_test_tensors(samples, fresh), ref)
    assert (fresh.hits, fresh.misses) == (len(samples), 0)


def test_a_row_never_serves_another_files_pixels(tmp_path):
    """The checksum covers the key: a row read under another key (an index that does not
    match the data file) is decoded again; a file rewritten in place gets a new row."""
    samples = _images(tmp_path / "img", n=4)
    cache = ImageCache(tmp_path / "cache", H, W)
    _test_tensors(samples, cache)
    rows = cache.register([s.path for s in samples])
    assert cache.get(int(rows.rows[0]), int(rows.seeds[1])) is None
    assert cache.get(int(rows.rows[0]), int(rows.seeds[0])) is not None
    # rewrite image 0 (other pixels, other size: a new key)
    Image.fromarray(np.full((50, 30, 3), 200, np.uint8)).save(samples[0].path)
    os.utime(samples[0].path, ns=(1, 1))
    again = cache.register([s.path for s in samples])
    assert again.rows[0] != rows.rows[0] and list(again.rows[1:]) == list(rows.rows[1:])
    assert torch.equal(_test_tensors(samples, cache), _test_tensors(samples))


def test_two_sizes_keep_separate_files(tmp_path):
    samples = _images(tmp_path / "img", n=5)
    small = ImageCache(tmp_path / "cache", 24, 12)
    big = ImageCache(tmp_path / "cache", H, W)
    for _ in range(2):
        assert torch.equal(_test_tensors(samples, big), _test_tensors(samples))
        assert torch.equal(
            _test_tensors(samples, small, size=(24, 12)), _test_tensors(samples, size=(24, 12))
        )
    assert small.data_path != big.data_path and small.keys_path != big.keys_path
    assert os.path.getsize(small.data_path) == 5 * (8 + 24 * 12 * 3)
    assert os.path.getsize(big.data_path) == 5 * (8 + H * W * 3)
    assert (small.hits, big.hits) == (5, 5)
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert names == [
        "images_24x12.v1.keys",
        "images_24x12.v1.u8",
        "images_32x16.v1.keys",
        "images_32x16.v1.u8",
    ]


def test_dataloader_workers_give_the_same_tensors(tmp_path):
    samples = _images(tmp_path / "img", n=14)
    ref = _test_tensors(samples)
    cache = ImageCache(tmp_path / "cache", H, W)
    assert torch.equal(_test_tensors(samples, cache, num_workers=2), ref)  # workers fill
    assert torch.equal(_test_tensors(samples, cache, num_workers=2), ref)  # workers read
    # what the workers wrote is whole: a fresh reader finds every row valid
    fresh = ImageCache(tmp_path / "cache", H, W)
    assert torch.equal(_test_tensors(samples, fresh), ref)
    assert (fresh.hits, fresh.misses) == (len(samples), 0)


def test_unreadable_images_keep_the_bad_image_handling(tmp_path):
    samples = _images(tmp_path / "img", n=6)
    (tmp_path / "img" / "bad.jpg").write_bytes(corrupt_jpeg())
    samples.insert(2, Sample(str(tmp_path / "img" / "bad.jpg"), 0, 0))
    samples.insert(4, Sample(str(tmp_path / "img" / "missing.jpg"), 1, 1))
    tf = build_transforms(H, W, train=False)
    cache = ImageCache(tmp_path / "cache", H, W)
    assert file_key(samples[4].path) is None

    def run(c):
        batches = list(build_test_loader(samples, tf, 3, bad_images="skip", image_cache=c))
        return torch.cat([b["img"] for b in batches if len(b["index"])]), [
            x for b in batches for x in b["bad"]
        ]

    ref, ref_bad = run(None)
    assert [i for i, _, _ in ref_bad] == [2, 4]
    for _ in range(2):  # unreadable images are never cached: the same drops every pass
        out, bad = run(cache)
        assert torch.equal(out, ref) and bad == ref_bad
    with pytest.raises(ImageReadError, match="bad.jpg"):
        list(build_test_loader(samples, tf, 3, bad_images="error", image_cache=cache))


def test_a_transform_without_the_caches_resize_is_refused(tmp_path):
    samples = _images(tmp_path / "img", n=2)
    cache = ImageCache(tmp_path / "cache", H, W)
    with pytest.raises(ValueError, match="must begin with Resize"):
        ImageDataset(samples, build_transforms(24, 12, train=False), image_cache=cache)
    with pytest.raises(ValueError, match="must begin with Resize"):
        ImageDataset(samples, None, image_cache=cache)


def test_a_key_line_cut_by_a_kill_is_dropped(tmp_path):
    samples = _images(tmp_path / "img", n=3)
    cache = ImageCache(tmp_path / "cache", H, W)
    cache.register([s.path for s in samples[:2]])
    with open(cache.keys_path, "ab") as f:
        f.write(json.dumps(file_key(samples[2].path)).encode()[:10])  # no newline
    fresh = ImageCache(tmp_path / "cache", H, W)
    rows = fresh.register([s.path for s in samples]).rows
    assert list(rows) == [0, 1, 2]
    assert cache.keys_path.read_bytes().count(b"\n") == 3
    assert torch.equal(_test_tensors(samples, fresh), _test_tensors(samples))


def test_config_choices_and_folders(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.image_cache=disc"])
    msg = str(err.value)
    assert "'data.image_cache'" in msg and "'disk', 'none'" in msg
    assert "Did you mean 'disk'?" in msg
    cfg = load_config(None)
    assert (cfg.data.image_cache, cfg.data.image_cache_dir) == ("disk", "")
    run = tmp_path / "run"
    assert image_cache_dir(cfg, run) == str(run / "image_cache")
    shared = load_config(None, [f"data.image_cache_dir={tmp_path / 'shared'}"])
    assert image_cache_dir(shared, run) == str(tmp_path / "shared")
    assert image_cache_dir(load_config(None, ["data.image_cache=none"]), run) == ""
    # the run's own folder is removed at the end, one the user named is kept
    for c in (cfg, shared):
        ImageCache(image_cache_dir(c, run), H, W).register([])
        remove_run_image_cache(c, run)
    assert not (run / "image_cache").exists() and (tmp_path / "shared").is_dir()


def _records(run_dir):
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append({k: v for k, v in r.items() if "time" not in k and not k.endswith("_s")})
    return out


def test_a_run_gives_the_same_records_with_and_without_the_cache(tmp_path):
    """Source training (train loader, evaluations) with the cache in the run folder, with
    ``data.image_cache=none``, and with a shared folder: the same records; the run's own
    cache folder is gone at the end, the shared one is kept."""
    train_tiny_source(tmp_path / "none", "data.image_cache=none")
    train_tiny_source(tmp_path / "disk")
    train_tiny_source(tmp_path / "shared_run", f"data.image_cache_dir={tmp_path / 'shared'}")
    ref = _records(tmp_path / "none" / "runs" / "src")
    assert any(r.get("kind") == "final" for r in ref)
    assert _records(tmp_path / "disk" / "runs" / "src") == ref
    assert _records(tmp_path / "shared_run" / "runs" / "src") == ref
    assert not (tmp_path / "disk" / "runs" / "src" / "image_cache").exists()
    assert (tmp_path / "shared" / "images_32x16.v1.u8").is_file()


def test_a_full_disk_leaves_the_images_decoded(tmp_path, monkeypatch, caplog):
    """No room for the rows (posix_fallocate fails): the loader decodes, as without a cache,
    with a warning; nothing is ever written past the end of the file."""
    import errno

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    samples = _images(tmp_path / "img", n=4)
    cache = ImageCache(tmp_path / "cache", H, W)
    with caplog.at_level("WARNING", logger="adaptreid"):
        out = _test_tensors(samples, cache)
    assert torch.equal(out, _test_tensors(samples))
    assert "no room for 4 more rows" in caplog.text
    assert (cache.hits, cache.misses) == (0, 4)
    assert os.path.getsize(cache.data_path) == 0 and cache.keys_path.read_bytes() == b""


def test_a_folder_that_cannot_be_written_leaves_the_images_decoded(tmp_path, caplog):
    samples = _images(tmp_path / "img", n=3)
    (tmp_path / "file").write_text("not a folder")
    cache = ImageCache(tmp_path / "file" / "cache", H, W)
    with caplog.at_level("WARNING", logger="adaptreid"):
        assert torch.equal(_test_tensors(samples, cache), _test_tensors(samples))
    assert "cannot be used" in caplog.text and cache.misses == 3
