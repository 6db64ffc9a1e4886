"""Bad images in a target folder: ``adaptreid data check``, the loaders' skip mode, extraction
and evaluation that drop exactly the unreadable images, and the run's BadImageLog."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import corrupt_jpeg, noise_jpeg, write_market

from adaptreid.cli import main
from adaptreid.data import BadImageLog, build_dataset, collate_skip_bad
from adaptreid.data.check import check_dataset, check_images
from adaptreid.data.loaders import PKSampling, build_test_loader, build_train_loader
from adaptreid.data.transforms import build_transforms
from adaptreid.engine.evaluator import evaluate_model
from adaptreid.engine.extract import extract_features
from adaptreid.errors import DatasetError

TF = build_transforms(16, 8, train=False)


# (split folder, file name) -> (bytes, expected start of the reason)
BAD = {
    ("bounding_box_train", "0007_c1s1_000001_01.jpg"): (corrupt_jpeg(), "is corrupt or truncated"),
    ("bounding_box_train", "0009_c2s1_000002_01.jpg"): (
        noise_jpeg(2)[: len(noise_jpeg(2)) // 2],
        "is corrupt or truncated",
    ),
    ("query", "0005_c2s1_000001_00.jpg"): (b"", "is empty (0 bytes)"),
    ("bounding_box_test", "0000_c3s1_000003_01.jpg"): (
        b"a text file named .jpg\n",
        "is not a readable image",
    ),
}


@pytest.fixture
def target(tmp_path) -> Path:
    """A Market-style target folder (conftest's default names: 16 train, 2 query, 3 gallery
    images + 2 junk) with a corrupt, a truncated, a zero-byte and a non-image file."""
    root = write_market(tmp_path / "tgt")
    for (sub, name), (data, _) in BAD.items():
        (root / sub / name).write_bytes(data)
    return root


def _bad_paths(root: Path) -> dict[str, str]:
    return {str(root / sub / name): reason for (sub, name), (_, reason) in BAD.items()}


# --------------------------------------------------------------------------------------------
# adaptreid data check


def test_data_check_lists_each_bad_image_with_its_reason_and_exits_1(target, capsys):
    code = main(["data", "check", "--dataset", "market1501", "--root", str(target), "-q"])
    assert code == 1
    out = capsys.readouterr().out
    for path, reason in _bad_paths(target).items():
        (line,) = [x for x in out.splitlines() if path in x]
        assert f"{path}: {reason}" in line
    assert "4 bad image(s):" in out
    assert "21 images read" in out  # 16 train + 2 query + 3 gallery (junk is not a sample)
    assert "train 2 of 16, query 1 of 2, gallery 1 of 3" in out


def test_data_check_clean_folder_exits_0(tmp_path, capsys):
    root = write_market(tmp_path / "clean")
    assert main(["data", "check", "--dataset", "market", "--root", str(root), "-q"]) == 0
    assert "all readable" in capsys.readouterr().out


@pytest.mark.parametrize("workers", [1, 2])
def test_check_images_in_processes_equals_in_process(target, workers):
    ds = build_dataset("market1501", target)
    paths = [s.path for s in ds.train + ds.query + ds.gallery]
    bad = check_images(paths, workers=workers)
    assert set(bad) == set(_bad_paths(target))
    for path, reason in _bad_paths(target).items():
        assert bad[path].startswith(reason)
    report = check_dataset(ds, workers=workers)
    assert not report.ok and [b[0] for b in report.bad] == ["train", "train", "query", "gallery"]


# --------------------------------------------------------------------------------------------
# extraction


class _MeanColour(torch.nn.Module):
    """Features = mean colour of the image: a deterministic, per-image function."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_extraction_in_skip_mode_drops_exactly_the_bad_images_and_keeps_order(target, num_workers):
    ds = build_dataset("market1501", target)
    samples = ds.train
    bad = _bad_paths(target)
    loader = build_test_loader(samples, TF, 3, num_workers, bad_images="skip")
    f = extract_features(_MeanColour(), loader, normalize=False, verbose=False)
    good = [i for i, s in enumerate(samples) if s.path not in bad]
    assert f.kept.tolist() == good  # increasing: the order of the rest is kept
    assert [(i, p) for i, p, _ in f.dropped] == [
        (i, s.path) for i, s in enumerate(samples) if s.path in bad
    ]
    assert all(r.startswith(bad[p]) for _, p, r in f.dropped)
    # the rows are the features of the readable images, in their order
    ref = extract_features(
        _MeanColour(),
        build_test_loader([samples[i] for i in good], TF, 4),
        normalize=False,
        verbose=False,
    )
    assert torch.equal(f.feats, ref.feats)
    assert f.pids.tolist() == [samples[i].pid for i in good] == ref.pids.tolist()
    assert ref.kept.tolist() == list(range(len(good))) and ref.dropped == []


def test_extraction_in_error_mode_names_the_file(target):
    ds = build_dataset("market1501", target)
    loader = build_test_loader(ds.query, TF, 4)  # bad_images="error" is the default
    with pytest.raises(DatasetError, match=re.escape(str(target / "query" / "0005_c2s1_"))):
        extract_features(_MeanColour(), loader, verbose=False)


def test_collate_of_a_batch_of_bad_items_only():
    items = [
        {"img": None, "pid": 1, "camid": 0, "index": 4, "path": "a.jpg", "bad": "is empty"},
        {"img": None, "pid": 1, "camid": 0, "index": 5, "path": "b.jpg", "bad": "is cut"},
    ]
    batch = collate_skip_bad(items)
    assert batch["bad"] == [(4, "a.jpg", "is empty"), (5, "b.jpg", "is cut")]
    assert len(batch["img"]) == len(batch["pid"]) == len(batch["index"]) == 0
    good = {"img": torch.zeros(3, 2, 2), "pid": 2, "camid": 1, "index": 0}
    batch = collate_skip_bad([good, items[0]])
    assert batch["img"].shape == (1, 3, 2, 2) and batch["index"].tolist() == [0]
    assert collate_skip_bad([good])["bad"] == []  # always present


# --------------------------------------------------------------------------------------------
# training batches


def test_train_loader_in_skip_mode_yields_short_pk_batches_and_reports_every_bad_image(target):
    ds = build_dataset("market1501", target)
    bad = _bad_paths(target)
    loader = build_train_loader(ds.train, TF, PKSampling(2, 2, seed=0), bad_images="skip")
    seen_bad = []
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        batches = list(loader)
        for b in batches:
            assert len(b["img"]) >= 2  # BatchNorm can train on it
            assert len(b["img"]) + len(b["bad"]) <= 4  # P x K = 4, minus the dropped images
            assert max(Counter(b["pid"].tolist()).values()) <= 2  # at most K per identity
            assert not {ds.train[i].path for i in b["index"].tolist()} & set(bad)
            seen_bad += [p for _, p, _ in b["bad"]]
        # every bad image drawn this epoch is in epoch_bad, and a batch reports only those
        assert {p for _, p, _ in loader.epoch_bad} <= set(bad)
        assert sum(len(b["bad"]) for b in batches) <= len(loader.epoch_bad)
    assert set(seen_bad) == {p for p in bad if "bounding_box_train" in p}
    # in error mode the same loader stops on the first bad image, naming it
    strict = build_train_loader(ds.train, TF, PKSampling(2, 2, seed=0))
    with pytest.raises(DatasetError, match="bounding_box_train/000[79]_c"):
        for _ in range(3):
            list(strict)


def test_a_batch_left_with_one_image_is_not_yielded_and_its_bad_images_are_reported(tmp_path):
    train = [f"0001_c1s1_00000{i}_00.jpg" for i in range(2)] + [
        f"0002_c1s1_00000{i}_00.jpg" for i in range(2)
    ]
    root = write_market(tmp_path / "m", train=train)
    for name in train[:2]:  # identity 1 is unreadable: its P=1 x K=2 batch is empty
        (root / "bounding_box_train" / name).write_bytes(b"")
    ds = build_dataset("market1501", root)
    loader = build_train_loader(ds.train, TF, PKSampling(1, 2, seed=0), bad_images="skip")
    assert len(loader) == 2
    for epoch in range(4):
        loader.sampler.set_epoch(epoch)
        batches = list(loader)
        assert [b["pid"].tolist() for b in batches] == [[2, 2]]
        assert len(loader.epoch_bad) == 2
        reported = [p for b in batches for _, p, _ in b["bad"]]
        assert reported in ([], [ds.train[0].path, ds.train[1].path])


def _count_batches_on_rank(rank: int, world: int, root: str, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    ds = build_dataset("market1501", root)
    loader = build_train_loader(
        ds.train, TF, PKSampling(1, 2, seed=0, rank=rank, world_size=world), bad_images="skip"
    )
    counts = []
    for epoch in range(4):
        loader.sampler.set_epoch(epoch)
        counts.append(len(list(loader)))
    Path(out, f"rank{rank}.json").write_text(json.dumps(counts))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_skip_a_too_short_batch_together(tmp_path):
    """One identity's P=1 x K=2 batch is unreadable: whichever rank draws it, both ranks skip
    that batch (else one rank would take a step the other waits for forever)."""
    import torch.multiprocessing as mp

    train = [f"{pid:04d}_c1s1_00000{i}_00.jpg" for pid in (1, 2, 3, 4) for i in range(2)]
    root = write_market(tmp_path / "m", train=train)
    for name in train[:2]:
        (root / "bounding_box_train" / name).write_bytes(b"")
    init = f"file://{tmp_path / 'store'}"
    mp.spawn(_count_batches_on_rank, args=(2, str(root), init, str(tmp_path)), nprocs=2)
    counts = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert counts[0] == counts[1] == [1, 1, 1, 1]  # 2 batches per rank, one skipped on both


def test_trainer_epoch_goes_on_over_bad_training_images(target):
    from adaptreid.data.datasets import relabel
    from adaptreid.engine.trainer import Stage, Trainer
    from adaptreid.losses.reid_loss import ReidLoss
    from adaptreid.models import build_model

    torch.manual_seed(0)
    train, pids = relabel(build_dataset("market1501", target).train)
    model = build_model("small_cnn", num_classes=len(pids))
    crit = ReidLoss(len(pids), model.feat_dim)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = build_train_loader(train, TF, PKSampling(2, 2, seed=0), bad_images="skip")
    stage = Stage(crit, opt, loader, epochs=2)
    trainer = Trainer(model, stage, device=torch.device("cpu"), verbose=False)
    for epoch in (1, 2):
        stats = trainer.train_epoch(epoch)
        assert np.isfinite(stats["loss"])
    assert {p for _, p, _ in loader.epoch_bad} <= set(_bad_paths(target))


# --------------------------------------------------------------------------------------------
# evaluation


def test_evaluation_in_skip_mode_leaves_bad_query_and_gallery_images_out(target):
    ds = build_dataset("market1501", target)
    kw = dict(height=16, width=8, device=torch.device("cpu"), num_workers=0, verbose=False)
    with pytest.raises(DatasetError, match="0005_c2s1_000001_00.jpg"):
        evaluate_model(_MeanColour(), ds, **kw)
    out = evaluate_model(_MeanColour(), ds, bad_images="skip", **kw)
    bad = _bad_paths(target)
    assert [p for _, p, _ in out.dropped["query"]] == [s.path for s in ds.query if s.path in bad]
    assert [p for _, p, _ in out.dropped["gallery"]] == [
        s.path for s in ds.gallery if s.path in bad
    ]
    m = out.metrics()
    assert m["bad_query_images"] == 1 and m["bad_gallery_images"] == 1
    assert out.distmat.shape == (len(ds.query) - 1, len(ds.gallery) - 1)
    # the same as evaluating the dataset without those images
    clean = type(ds)(
        ds.name,
        ds.root,
        ds.train,
        [s for s in ds.query if s.path not in bad],
        [s for s in ds.gallery if s.path not in bad],
    )
    ref = evaluate_model(_MeanColour(), clean, **kw)
    assert np.array_equal(ref.distmat, out.distmat)
    assert ref.result.as_dict() == out.result.as_dict()
    assert "bad_query_images" not in ref.metrics()


# --------------------------------------------------------------------------------------------
# BadImageLog


def test_bad_image_log_records_once_saves_atomically_and_renders_markdown(tmp_path):
    log = BadImageLog()
    assert not log and log.to_markdown() == "" and log.summary() == "no unreadable image"
    assert log.add("/d/a.jpg", "is empty (0 bytes)", "extract step 1")
    assert not log.add("/d/a.jpg", "another reason", "train step 1 epoch 2")  # once each
    new = log.add_many(
        [(3, "/d/b|c.jpg", "is not a readable image"), (0, "/d/a.jpg", "x")], "extract step 2"
    )
    assert new == 1 and len(log) == 2 and log.paths == ["/d/a.jpg", "/d/b|c.jpg"]
    a = log.get("/d/a.jpg")
    assert (a.reason, a.first_seen, a.count) == ("is empty (0 bytes)", "extract step 1", 3)
    assert "/d/b|c.jpg" in log and "2 unreadable images skipped" in log.summary()

    path = log.save(tmp_path / "run")
    assert path == tmp_path / "run" / "bad_images.json" and not log.changed
    assert sorted(p.name for p in path.parent.iterdir()) == ["bad_images.json"]
    back = BadImageLog.load(tmp_path / "run")
    assert [vars(b) for b in back] == [vars(b) for b in log]
    assert BadImageLog.load(tmp_path / "nothing-here").paths == []

    md = log.to_markdown(root="/d")
    assert md.startswith("## Unreadable images\n")
    assert "2 images could not be read" in md
    assert "| `a.jpg` | is empty (0 bytes) | extract step 1 | 3 |" in md
    assert "`b\\|c.jpg`" in md  # a pipe cannot break the table
    many = BadImageLog()
    many.add_many([(i, f"/x/{i}.jpg", "is empty (0 bytes)") for i in range(7)], "extract step 1")
    assert "... and 2 more" in many.to_markdown(limit=5)


def test_bad_image_log_write_interrupted_keeps_the_previous_file(tmp_path, monkeypatch):
    log = BadImageLog()
    log.add("/d/a.jpg", "is empty (0 bytes)", "extract step 1")
    path = log.save(tmp_path)
    before = path.read_text()
    log.add("/d/b.jpg", "is corrupt or truncated", "extract step 2")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # a kill in the middle of the write

    monkeypatch.setattr(json, "dump", boom)
    with pytest.raises(KeyboardInterrupt):
        log.save(tmp_path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["bad_images.json"]  # no temp file left


def test_bad_image_log_refuses_a_file_that_is_not_one(tmp_path):
    (tmp_path / "bad_images.json").write_text('{"version": 1, "images": [{"path": "a"}]}')
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "bad_images.json"))):
        BadImageLog.load(tmp_path)
    (tmp_path / "bad_images.json").write_text("{not json")
    with pytest.raises(DatasetError, match="cannot read the bad-image log"):
        BadImageLog.load(tmp_path)
