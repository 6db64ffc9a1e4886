"""Datasets with missing splits (a test split kept apart from its training images, a
train-only target) and targets without camera ids: they open, ``data info`` says what is
missing or unknown, evaluation uses only query and gallery, and code that needs a missing
split fails naming it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_jpeg, write_market

from adaptreid.cli import main
from adaptreid.data import MissingSplit, build_dataset, relabel
from adaptreid.data.loaders import PKSampling, build_test_loader, build_train_loader
from adaptreid.data.transforms import build_transforms
from adaptreid.engine.evaluator import evaluate_model, protocol_camids
from adaptreid.errors import DatasetError
from adaptreid.evaluation import evaluate_rank

TF = build_transforms(16, 8, train=False)


class _MeanColour(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def _eval_only(tmp_path: Path) -> Path:
    root = write_market(tmp_path / "Market-1501-v15.09.15")
    shutil.rmtree(root / "bounding_box_train")
    return root


# --------------------------------------------------------------------------------------------
# missing splits


def test_evaluate_a_market_folder_with_only_query_and_gallery(tmp_path, capsys):
    root = _eval_only(tmp_path)
    code = main(
        [
            "evaluate",
            "--backbone",
            "small_cnn",
            "--dataset",
            "market1501",
            "--root",
            str(tmp_path),  # the folder above it: the layout is still found
            "--height",
            "32",
            "--width",
            "16",
            "--num-workers",
            "0",
            "-q",
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "2 query x 3 gallery" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_queries"] == 2
    ds = build_dataset("market1501", root)
    assert isinstance(ds.train, MissingSplit) and ds.train == []
    assert ds.missing == {"train": f"folder {root / 'bounding_box_train'} is missing"}


def test_data_info_shows_the_missing_split(tmp_path, capsys):
    root = _eval_only(tmp_path)
    assert main(["data", "info", "--dataset", "market1501", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"train\s+\|\s+-\s+\|\s+-\s+\|\s+-", out)
    assert f"no train split: folder {root / 'bounding_box_train'} is missing" in out
    assert re.search(r"query\s+\|\s+2\s+\|", out)


def test_using_a_missing_split_fails_naming_the_folder(tmp_path, capsys):
    root = _eval_only(tmp_path)
    ds = build_dataset("market1501", root)
    folder = re.escape(str(root / "bounding_box_train"))
    with pytest.raises(DatasetError, match=f"no train split: folder {folder} is missing.*training"):
        relabel(ds.train)
    with pytest.raises(DatasetError, match=folder):
        build_train_loader(ds.train, TF, PKSampling(2, 2, seed=0))
    with pytest.raises(DatasetError, match=folder):
        build_test_loader(ds.train, TF)
    with pytest.raises(DatasetError, match=f"{folder}.*training needs it"):
        ds.require("train", purpose="training")
    ds.require("query", "gallery")  # present: no error
    # source training on it stops early with that message
    code = main(
        [
            "train",
            "--config",
            "configs/source/base.yaml",
            "-q",
            f"output_dir={tmp_path / 'runs'}",
            "name=x",
            "data.source=market1501",
            f"data.source_root={root}",
            "data.num_workers=0",
            "model.backbone=small_cnn",
        ]
    )
    assert code == 2
    assert str(root / "bounding_box_train") in capsys.readouterr().err


def test_evaluating_a_train_only_folder_names_the_missing_query_folder(tmp_path, capsys):
    root = write_market(tmp_path / "m")
    shutil.rmtree(root / "query")
    shutil.rmtree(root / "bounding_box_test")
    ds = build_dataset("market1501", root)
    assert len(ds.train) == 16 and set(ds.missing) == {"query", "gallery"}
    kw = dict(height=16, width=8, device=torch.device("cpu"), num_workers=0, verbose=False)
    with pytest.raises(DatasetError, match=re.escape(f"folder {root / 'query'} is missing")):
        evaluate_model(_MeanColour(), ds, **kw)
    args = ["evaluate", "--backbone", "small_cnn", "--dataset", "market1501", "--root", str(root)]
    assert main([*args, "--num-workers", "0", "-q"]) == 2
    err = capsys.readouterr().err
    assert "no query split" in err and "evaluation needs it" in err


def test_market_folder_with_query_but_no_gallery_opens_and_says_so(tmp_path):
    root = write_market(tmp_path / "m")
    shutil.rmtree(root / "bounding_box_test")
    ds = build_dataset("market1501", root)
    assert len(ds.train) == 16 and len(ds.query) == 2 and set(ds.missing) == {"gallery"}


def test_duke_and_cuhk03_open_with_only_query_and_gallery(tmp_path):
    names = [f"{pid:04d}_c{cam}_f{pid * 10 + cam:07d}.jpg" for pid in (1, 5) for cam in (1, 8)]
    duke = write_market(tmp_path / "DukeMTMC-reID", train=names, query=names[:1], gallery=names)
    shutil.rmtree(duke / "bounding_box_train")
    ds = build_dataset("dukemtmc", tmp_path)
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (0, 1, 4)
    assert "bounding_box_train is missing" in ds.missing["train"]

    cuhk = tmp_path / "cuhk03-np"
    write_market(cuhk / "labeled")
    shutil.rmtree(cuhk / "labeled" / "bounding_box_train")
    ds = build_dataset("cuhk03", cuhk, variant="labeled")
    assert ds.missing["train"] == f"folder {cuhk / 'labeled' / 'bounding_box_train'} is missing"
    assert len(ds.query) == 2


def _write_msmt(root: Path, parts: tuple[str, ...]) -> Path:
    base = root / "MSMT17_V1"
    lists = {
        "train": ("train", [(0, 1), (0, 2), (1, 1)]),
        "val": ("train", [(1, 3)]),
        "query": ("test", [(7, 1)]),
        "gallery": ("test", [(7, 2), (8, 4)]),
    }
    for name in parts:
        folder, items = lists[name]
        lines = []
        for i, (pid, cam) in enumerate(items):
            rel = f"{pid:04d}/{pid:04d}_{i:03d}_{cam:02d}_0303morning_{i:04d}_0.jpg"
            write_jpeg(base / folder / rel, color=i)
            lines.append(f"{rel} {pid}\n")
        (base / f"list_{name}.txt").write_text("".join(lines))
    return base


def test_msmt17_with_only_the_test_part_or_only_the_train_part(tmp_path):
    base = _write_msmt(tmp_path / "a", ("query", "gallery"))
    ds = build_dataset("msmt17", tmp_path / "a")
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (0, 1, 2)
    assert ds.missing == {"train": f"MSMT17 list file {base / 'list_train.txt'} is missing"}
    base = _write_msmt(tmp_path / "b", ("train", "val"))
    ds = build_dataset("msmt17", base)
    assert len(ds.train) == 4 and set(ds.missing) == {"query", "gallery"}
    (base / "list_val.txt").unlink()  # the train part is incomplete: still an error
    with pytest.raises(DatasetError, match="list_val.txt is missing"):
        build_dataset("msmt17", base)


def test_manifest_without_rows_for_a_split(tmp_path):
    for i in range(3):
        write_jpeg(tmp_path / "img" / f"{i}.jpg", color=i)
    (tmp_path / "manifest.csv").write_text(
        "path,pid,camid,split\nimg/0.jpg,1,0,query\nimg/1.jpg,1,1,gallery\nimg/2.jpg,2,1,gallery\n"
    )
    ds = build_dataset("manifest", tmp_path)
    assert ds.missing == {"train": f"manifest {tmp_path / 'manifest.csv'} has no 'train' rows"}
    with pytest.raises(DatasetError, match="has no 'train' rows.*training"):
        relabel(ds.train)
    (tmp_path / "manifest.csv").write_text("path,pid,camid,split\nimg/0.jpg,1,0,train\n")
    ds = build_dataset("manifest", tmp_path)
    assert len(ds.train) == 1 and set(ds.missing) == {"query", "gallery"}


# --------------------------------------------------------------------------------------------
# unknown camera ids


def _manifest(root: Path, rows: list[str], header: str) -> Path:
    """Images whose colour is their pid (all images of a person are the same picture)."""
    for row in rows:
        path, pid = row.split(",")[:2]
        write_jpeg(root / path, color=int(pid or 0) * 40)
    (root / "manifest.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


NO_CAM_ROWS = [
    "img/t0.jpg,1,train",
    "img/t1.jpg,1,train",
    "img/t2.jpg,2,train",
    "img/q0.jpg,3,query",
    "img/q1.jpg,4,query",
    "img/g0.jpg,3,gallery",
    "img/g1.jpg,4,gallery",
    "img/g2.jpg,5,gallery",
]


def test_manifest_without_camid_column_has_unknown_cameras(tmp_path, capsys):
    root = _manifest(tmp_path, NO_CAM_ROWS, "path,pid,split")
    ds = build_dataset("manifest", root)
    assert {s.camid for s in ds.train + ds.query + ds.gallery} == {-1}
    assert not ds.cameras_known
    assert ds.summary()["gallery"] == {"images": 3, "identities": 3, "cameras": 0}
    assert main(["data", "info", "--dataset", "manifest", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "camera ids: unknown (camid -1)" in out
    assert re.search(r"gallery\s+\|\s+3\s+\|\s+3\s+\|\s+unknown", out)
    assert build_dataset("market1501", write_market(tmp_path / "m")).cameras_known


def test_manifest_with_some_empty_camids(tmp_path, capsys):
    rows = [
        "img/a.jpg,1,0,train",
        "img/b.jpg,1,,train",
        "img/c.jpg,2,-1,query",
        "img/d.jpg,2,1,gallery",
    ]
    root = _manifest(tmp_path, rows, "path,pid,camid,split")
    ds = build_dataset("manifest", root)
    assert [s.camid for s in ds.train + ds.query + ds.gallery] == [0, -1, -1, 1]
    assert not ds.cameras_known
    assert "camera ids: unknown for 2 of 4 images" in ds.format_summary()
    (root / "manifest.csv").write_text("path,pid,camid,split\nimg/a.jpg,1,-2,train\n")
    with pytest.raises(DatasetError, match="line 2: .*camid >= 0 \\(or empty/-1 = unknown\\)"):
        build_dataset("manifest", root)


def test_unknown_cameras_filter_no_true_match():
    rng = np.random.default_rng(0)
    dist = rng.random((4, 6))
    q_pids, g_pids = np.array([1, 2, 3, 4]), np.array([1, 1, 2, 3, 4, 9])
    unknown_q, unknown_g = np.full(4, -1), np.full(6, -1)
    with pytest.raises(DatasetError, match="none of the 4 queries"):
        evaluate_rank(dist, q_pids, g_pids, unknown_q, unknown_g)  # -1 == -1: all filtered
    res = evaluate_rank(dist, q_pids, g_pids, *protocol_camids(unknown_q, unknown_g))
    ref = evaluate_rank(dist, q_pids, g_pids, np.zeros(4), np.ones(6))  # no pair filtered
    assert res.as_dict() == ref.as_dict() and res.num_valid_queries == 4
    # known cameras keep the protocol; a pair with one unknown camera is never filtered
    q_cams, g_cams = np.array([0, 0, -1, 1]), np.array([0, 1, 0, -1, 1, 0])
    q2, g2 = protocol_camids(q_cams, g_cams)
    assert q2.tolist() == [0, 0, -1, 1] and g2.tolist() == [0, 1, 0, -2, 1, 0]
    assert not (q2[:, None] == g2[None, :])[q_cams == -1].any()
    assert not (q2[:, None] == g2[None, :])[:, g_cams == -1].any()


def test_evaluation_on_a_target_without_camera_ids(tmp_path):
    ds = build_dataset("manifest", _manifest(tmp_path, NO_CAM_ROWS, "path,pid,split"))
    out = evaluate_model(
        _MeanColour(), ds, height=16, width=8, device=torch.device("cpu"), num_workers=0
    )
    # every query is evaluated; its true match is the same picture: a perfect ranking
    assert out.result.num_valid_queries == out.result.num_queries == 2
    assert out.result.mAP == 1.0 and out.result.rank(1) == 1.0
