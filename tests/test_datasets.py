"""Datasets (folder layouts, MSMT17 lists, CSV manifests), relabel, and image reading."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_shared, write_jpeg, write_market
from PIL import Image

from adaptreid.data import (
    ImageDataset,
    Sample,
    build_dataset,
    dataset_info,
    read_image,
    relabel,
)
from adaptreid.errors import ConfigError, DatasetError

# --------------------------------------------------------------------------------------------
# Market-style folders


def test_market_counts_junk_distractors_and_camid(make_market):
    base = make_market()
    ds = build_dataset("market1501", base.parent)  # the folder containing Market-1501-*
    assert ds.root == base
    assert ds.summary() == {
        "train": {"images": 16, "identities": 4, "cameras": 2},
        "query": {"images": 2, "identities": 2, "cameras": 2},
        "gallery": {"images": 3, "identities": 3, "cameras": 3},
    }
    assert ds.excluded == {"gallery": {"junk images (pid -1, standard protocol)": 2}}
    assert all(s.pid != -1 for s in ds.gallery)
    assert any(s.pid == 0 for s in ds.gallery)  # distractors are kept
    assert {s.camid for s in ds.train} == {0, 1}  # c1, c2 -> 0, 1
    assert ds.train == sorted(ds.train)
    assert Path(ds.train[0].path).parent == base / "bounding_box_train"
    text = ds.format_summary()
    assert "2 junk images" in text and "gallery" in text
    assert re.search(r"train\s+\|\s+16\s+\|\s+4\s+\|\s+2", text)


def test_market_root_is_the_folder_itself_and_alias(make_market):
    base = make_market(name="Market-1501")
    assert build_dataset("market", base).root == base
    assert "market1501" in dataset_info("MARKET1501", base)


def test_market_accepts_double_extension(make_market):
    base = make_market(train=["0002_c1s1_000001_01.jpg.jpg", "0002_c3s1_000001_01.jpg"])
    ds = build_dataset("market1501", base)
    assert [s.camid for s in ds.train] == [0, 2]
    assert ds.train[0].path.endswith(".jpg.jpg")


def test_non_image_entries_are_counted(make_market):
    base = make_market()
    (base / "query" / "Thumbs.db").write_bytes(b"x")
    ds = build_dataset("market1501", base)
    assert ds.excluded["query"] == {"non-image entries (ignored)": 1}
    assert "1 non-image entries" in ds.format_summary()


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "nope"))):
        build_dataset("market1501", tmp_path / "nope")


def test_root_without_layout_says_what_was_looked_for(tmp_path):
    (tmp_path / "Market-1501-v15.09.15" / "query").mkdir(parents=True)
    with pytest.raises(DatasetError) as e:
        build_dataset("market1501", tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "bounding_box_train" in msg
    assert "Market-1501-v15.09.15" in msg  # the candidate folder that lacks the layout


def test_two_market_folders_are_ambiguous(tmp_path):
    write_market(tmp_path / "Market-1501-a")
    write_market(tmp_path / "Market-1501-b")
    with pytest.raises(DatasetError, match="several dataset folders"):
        build_dataset("market1501", tmp_path)


def test_empty_folder(make_market):
    """An empty split folder is a split the dataset lacks: the error names the folder where
    the split is needed (an evaluation-only copy with an empty bounding_box_train/ opens)."""
    base = make_market(query=[])
    ds = build_dataset("market1501", base)
    assert ds.train and ds.gallery and not ds.query
    with pytest.raises(
        DatasetError, match=re.escape(f"no images (.jpg, .jpeg, .png, .bmp) in {base / 'query'}")
    ):
        ds.require("query", "gallery", purpose="evaluation")
    base = make_market("empty-train", train=[])
    ds = build_dataset("market1501", base)
    assert ds.query and ds.gallery and "train" in ds.missing
    with pytest.raises(DatasetError, match=re.escape("no images (.jpg, .jpeg, .png, .bmp) in")):
        ds.require("train", purpose="training")


def test_unparseable_name_names_file_and_pattern(make_market):
    base = make_market(train=["0002_c1s1_000001_01.jpg", "person7.jpg"])
    with pytest.raises(DatasetError) as e:
        build_dataset("market1501", base)
    msg = str(e.value)
    assert str(base / "bounding_box_train" / "person7.jpg") in msg
    assert "([-\\d]+)_c(\\d)" in msg


def test_camera_zero_is_rejected(make_market):
    base = make_market(train=["0002_c0s1_000001_01.jpg"])
    with pytest.raises(DatasetError, match="0002_c0s1_000001_01.jpg"):
        build_dataset("market1501", base)


def test_dukemtmc(tmp_path):
    names = [f"{pid:04d}_c{cam}_f{pid * 10 + cam:07d}.jpg" for pid in (1, 5) for cam in (1, 8)]
    write_market(tmp_path / "DukeMTMC-reID", train=names, query=names[:1], gallery=names[1:])
    ds = build_dataset("duke", tmp_path)
    assert ds.name == "dukemtmc"
    assert {s.camid for s in ds.train} == {0, 7}
    assert ds.summary()["train"]["identities"] == 2


def test_cuhk03_variants(tmp_path):
    root = tmp_path / "cuhk03-np"
    write_market(root / "detected")
    write_market(root / "labeled", train=["0001_c1_000001.png", "0002_c2_000001.png"])
    assert len(build_dataset("cuhk03", tmp_path).train) == 16
    ds = build_dataset("cuhk03", root, variant="labeled")
    assert ds.name == "cuhk03-labeled" and len(ds.train) == 2
    with pytest.raises(DatasetError, match="variant"):
        build_dataset("cuhk03", root, variant="labelled")


def test_cuhk03_missing_layout(tmp_path):
    write_market(tmp_path / "cuhk03-np" / "labeled")
    with pytest.raises(DatasetError, match="detected/"):
        build_dataset("cuhk03", tmp_path)


def test_unknown_option_and_name(make_market):
    base = make_market()
    with pytest.raises(ConfigError, match="variant"):
        build_dataset("market1501", base, variant="x")
    with pytest.raises(ConfigError, match="market1501"):
        build_dataset("market1502", base)


# --------------------------------------------------------------------------------------------
# MSMT17


def _write_msmt(root: Path, version: str = "V2") -> Path:
    train_dir, test_dir = (
        ("mask_train_v2", "mask_test_v2") if version == "V2" else ("train", "test")
    )
    base = root / f"MSMT17_{version}"
    lists = {
        "list_train.txt": (train_dir, [(0, 1), (0, 2), (1, 1), (1, 3)]),
        "list_val.txt": (train_dir, [(0, 5)]),
        "list_query.txt": (test_dir, [(0, 1), (1, 15)]),
        "list_gallery.txt": (test_dir, [(0, 2), (1, 4), (1, 6)]),
    }
    for list_name, (folder, items) in lists.items():
        lines = []
        for i, (pid, cam) in enumerate(items):
            rel = f"{pid:04d}/{pid:04d}_{i:03d}_{cam:02d}_0303morning_{i:04d}_0.jpg"
            write_jpeg(base / folder / rel, color=i)
            lines.append(f"{rel} {pid}\n")
        (base / list_name).write_text("".join(lines))
    return base


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_msmt17(tmp_path, version):
    base = _write_msmt(tmp_path, version)
    ds = build_dataset("msmt17", tmp_path)
    assert ds.root == base
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (5, 2, 3)
    assert sorted({s.camid for s in ds.query}) == [0, 14]
    assert len(build_dataset("msmt17", base, use_val=False).train) == 4


def test_msmt17_malformed_and_missing(tmp_path):
    base = _write_msmt(tmp_path)
    (base / "list_val.txt").write_text("0000/0000_000_01_x_0000_0.jpg\n")
    with pytest.raises(DatasetError, match=r"list_val.txt:\n  line 1: expected"):
        build_dataset("msmt17", base)
    (base / "list_val.txt").write_text("0000/0000_009_01_x_0000_0.jpg 0\n")
    with pytest.raises(DatasetError, match="0000_009_01_x_0000_0.jpg"):
        build_dataset("msmt17", base)
    (base / "list_val.txt").unlink()
    with pytest.raises(DatasetError, match="list_val.txt is missing"):
        build_dataset("msmt17", base)


# --------------------------------------------------------------------------------------------
# CSV manifests


def _write_manifest(root: Path, rows: list[str], header: str = "path,pid,camid,split") -> Path:
    for i in range(4):
        write_jpeg(root / "img" / f"{i}.jpg", color=i)
    path = root / "manifest.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


GOOD_ROWS = [
    "img/0.jpg,3,0,train",
    "img/1.jpg,,1,train",
    "img/2.jpg,5,0,query",
    "img/3.jpg,5,1,gallery",
]


def test_manifest_ok_with_unlabelled_train(tmp_path):
    path = _write_manifest(tmp_path, GOOD_ROWS)
    ds = build_dataset("manifest", tmp_path)
    assert ds.train == [
        Sample(str(tmp_path / "img/0.jpg"), 3, 0),
        Sample(str(tmp_path / "img/1.jpg"), -1, 1),
    ]
    assert ds.summary()["train"]["identities"] == 1
    assert "1 train images are unlabelled" in ds.format_summary()
    assert build_dataset("csv", path).query == ds.query  # root may be the .csv itself


def test_manifest_missing_column(tmp_path):
    path = _write_manifest(tmp_path, ["img/0.jpg,0,0"], header="path,pid,camid")
    with pytest.raises(DatasetError, match=f"{re.escape(str(path))} lacks column.s. split"):
        build_dataset("manifest", path)


def test_manifest_unknown_split_and_bad_int(tmp_path):
    path = _write_manifest(
        tmp_path, ["img/0.jpg,3,0,training", "img/1.jpg,x,0,train", "img/2.jpg,3,cam1,train"]
    )
    with pytest.raises(DatasetError) as e:
        build_dataset("manifest", path)
    msg = str(e.value)
    assert str(path) in msg
    assert "line 2: unknown split 'training'" in msg
    assert "line 3: column 'pid' must be an integer, got 'x'" in msg
    assert "line 4: column 'camid' must be an integer, got 'cam1'" in msg


def test_manifest_unlabelled_outside_train(tmp_path):
    path = _write_manifest(tmp_path, ["img/0.jpg,,0,query"])
    with pytest.raises(DatasetError, match="line 2: unlabelled image"):
        build_dataset("manifest", path)


def test_manifest_missing_paths_listed_then_counted(tmp_path):
    rows = [f"img/missing{i}.jpg,1,0,train" for i in range(7)]
    path = _write_manifest(tmp_path, rows)
    with pytest.raises(DatasetError) as e:
        build_dataset("manifest", path)
    msg = str(e.value)
    assert "7 paths that do not exist" in msg
    assert f"line 2: {tmp_path / 'img' / 'missing0.jpg'}" in msg
    assert "missing5.jpg" not in msg and "... and 2 more" in msg


@pytest.mark.parametrize("bad", ["../outside.jpg", "img/../../outside.jpg", "ABS"])
def test_manifest_path_escaping_root(tmp_path, bad):
    outside = write_jpeg(tmp_path / "outside.jpg")
    root = tmp_path / "ds"
    bad = str(outside) if bad == "ABS" else bad
    path = _write_manifest(root, [f"{bad},1,0,train"])
    with pytest.raises(DatasetError, match=f"line 2: path {re.escape(repr(bad))} leaves"):
        build_dataset("manifest", path)
    ds = build_dataset("manifest", path, allow_absolute=True)
    assert ds.train == [Sample(str(outside), 1, 0)]


def test_manifest_duplicates(tmp_path):
    path = _write_manifest(
        tmp_path, ["img/0.jpg,1,0,train", "img/1.jpg,1,0,train", "./img/0.jpg,1,0,query"]
    )
    with pytest.raises(DatasetError, match=r"lines 2, 4: the same image .*img/0.jpg"):
        build_dataset("manifest", path)


def test_manifest_empty_and_missing_file(tmp_path):
    (tmp_path / "manifest.csv").write_text("")
    with pytest.raises(DatasetError, match="is empty"):
        build_dataset("manifest", tmp_path)
    (tmp_path / "other").mkdir()
    with pytest.raises(DatasetError, match=f"no manifest.csv in {re.escape(str(tmp_path))}/other"):
        build_dataset("manifest", tmp_path / "other")


def test_relabel():
    samples = [Sample("a", 10, 0), Sample("b", 3, 1), Sample("c", -1, 0), Sample("d", 10, 1)]
    new, mapping = relabel(samples)
    assert mapping == {3: 0, 10: 1}
    assert [s.pid for s in new] == [1, 0, -1, 1]
    assert [s.path for s in new] == ["a", "b", "c", "d"]


# --------------------------------------------------------------------------------------------
# Images


def test_read_image_missing_and_zero_byte(tmp_path):
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'no.jpg'} does not exist")):
        read_image(tmp_path / "no.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'empty.jpg'} is empty")):
        read_image(tmp_path / "empty.jpg")


def test_read_image_corrupt_and_truncated(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image at all")
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'junk.jpg'} is not a")):
        read_image(tmp_path / "junk.jpg")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'cut.jpg'} is corrupt")):
        read_image(tmp_path / "cut.jpg")


def test_read_image_modes(tmp_path):
    Image.new("L", (4, 2), 77).save(tmp_path / "gray.png")
    Image.new("RGBA", (4, 2), (200, 100, 50, 0)).save(tmp_path / "clear.png")
    Image.new("RGBA", (4, 2), (200, 100, 50, 255)).save(tmp_path / "opaque.png")
    Image.new("LA", (4, 2), (90, 255)).save(tmp_path / "la.png")
    pal = Image.new("P", (4, 2), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30])
    pal.save(tmp_path / "pal.png")
    pal.save(tmp_path / "pal_clear.png", transparency=1)
    arr16 = np.array([[0, 257 * 128, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(arr16).save(tmp_path / "deep.png")
    expected = {
        "gray.png": [77, 77, 77],
        "clear.png": [0, 0, 0],  # fully transparent -> black
        "opaque.png": [200, 100, 50],
        "la.png": [90, 90, 90],
        "pal.png": [10, 20, 30],
        "pal_clear.png": [0, 0, 0],  # palette colour marked transparent -> black
    }
    for name, rgb in expected.items():
        img = read_image(tmp_path / name)
        assert img.mode == "RGB" and img.size == (4, 2 if name != "deep.png" else 1), name
        assert np.asarray(img)[0, 0].tolist() == rgb, name
    deep = np.asarray(read_image(tmp_path / "deep.png"))
    assert deep.shape == (1, 4, 3)
    assert deep[0, :, 0].tolist() == [0, 128, 255, 4]  # 16-bit scaled to 8-bit (v / 257)


def test_read_image_decompression_bomb(tmp_path, monkeypatch):
    write_jpeg(tmp_path / "big.jpg", size=(16, 8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(DatasetError, match="big.jpg is too large.*MAX_IMAGE_PIXELS"):
        read_image(tmp_path / "big.jpg")


def test_image_dataset_item(make_market):
    ds = build_dataset("market1501", make_market())
    data = ImageDataset(ds.query, transform=lambda im: torch.tensor(im.size))
    item = data[1]
    assert item["img"].tolist() == [8, 16]
    assert (item["pid"], item["camid"], item["index"]) == (5, 1, 1)
    assert len(data) == 2


# --------------------------------------------------------------------------------------------
# Real data in ../shared


@pytest.mark.shared
def test_real_market1501():
    root = require_shared("data/market1501/Market-1501-v15.09.15")
    ds = build_dataset("market1501", root.parent)
    stats = ds.summary()
    assert stats["train"] == {"images": 12936, "identities": 751, "cameras": 6}
    assert stats["query"]["images"] == 1693
    junk = ds.excluded["gallery"]["junk images (pid -1, standard protocol)"]
    assert stats["gallery"]["images"] + junk == 9832
    assert junk == 1910
    assert "query" not in ds.excluded and "train" not in ds.excluded
    assert {s.pid for s in ds.query} <= {s.pid for s in ds.gallery}
    assert sum(s.path.endswith(".jpg.jpg") for s in ds.train + ds.query + ds.gallery) > 0


@pytest.mark.shared
def test_real_pku_reid():
    root = require_shared("data/pku-reid/manifest.csv").parent
    ds = build_dataset("pku-reid", root)
    assert [len(ds.train), len(ds.query), len(ds.gallery)] == [592, 296, 296]
    stats = ds.summary()
    assert stats["train"]["identities"] == 37 and stats["train"]["cameras"] == 2
    assert not {s.pid for s in ds.train} & {s.pid for s in ds.query}
    img = read_image(ds.query[0].path)
    assert img.mode == "RGB" and img.size == (48, 128)


def test_market_found_two_levels_down(tmp_path):
    base = write_market(tmp_path / "market1501" / "Market-1501-v15.09.15")
    assert build_dataset("market1501", tmp_path).root == base
