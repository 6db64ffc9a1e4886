"""Using an adapted model: ``adaptreid embed`` / ``search``, the Python API, bad input.

A tiny model (``small_cnn``, 64 x 32 input) on a tiny Market-style folder whose image colour
encodes the identity."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import subprocess_env, write_identity_market, write_jpeg
from PIL import Image
from test_export import _checkpoint

import adaptreid
from adaptreid.cli import main
from adaptreid.data.datasets import build_dataset
from adaptreid.engine.evaluator import evaluate_model
from adaptreid.retrieval.features import load_features
from adaptreid.rundir.checkpoint import save_checkpoint
from adaptreid.rundir.model_io import model_from_checkpoint


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """``(tmp, checkpoint, market root)``."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("use")
    _, ckpt = _checkpoint(tmp)
    root = write_identity_market(tmp / "market")
    return tmp, ckpt, root


def _embed(ckpt, out, *args):
    return main(["embed", "--checkpoint", str(ckpt), "--out", str(out), "-q", *map(str, args)])


def test_import_adaptreid_stays_light():
    code = "import sys, adaptreid; assert 'torch' not in sys.modules; adaptreid.load"
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True)
    assert out.returncode == 0, out.stderr.decode()


def test_embed_equals_the_extraction_of_evaluate(setup, capsys):
    tmp, ckpt, root = setup
    model, _ = model_from_checkpoint(ckpt)
    ev = evaluate_model(
        model,
        build_dataset("market1501", root),
        height=64,
        width=32,
        device=torch.device("cpu"),
        num_workers=0,
        verbose=False,
    )
    for split, ref in (("query", ev.query), ("gallery", ev.gallery)):
        out = tmp / f"{split}.npz"
        argv = ["--dataset", "market1501", "--root", root, "--split", split, "--amp", "none"]
        assert _embed(ckpt, out, *argv) == 0  # evaluate_model's fp32: the same numbers
        fs = load_features(out)
        assert fs.features.dtype == np.float32
        np.testing.assert_array_equal(fs.features, ref.feats.numpy())
        np.testing.assert_array_equal(fs.camids, ref.camids)
        np.testing.assert_array_equal(fs.pids, ref.pids)
        assert [p.split("/")[-1] for p in fs.paths] == sorted(
            p.name
            for p in (root / ("query" if split == "query" else "bounding_box_test")).iterdir()
        )
    assert "wrote 6 features" in capsys.readouterr().out


def test_embed_progress_bar_and_batches(setup, capsys):
    tmp, ckpt, root = setup
    argv = ["embed", "--checkpoint", str(ckpt), "--images", str(root / "bounding_box_test")]
    assert main([*argv, "--batch-size", "2", "--out", str(tmp / "g2.npz")]) == 0
    assert "0/3 [" in capsys.readouterr().err  # the progress bar: 6 images, batches of 2
    assert main([*argv, "-q", "--out", str(tmp / "g6.npz")]) == 0
    a, b = load_features(tmp / "g2.npz"), load_features(tmp / "g6.npz")
    np.testing.assert_allclose(a.features, b.features, atol=1e-6)
    # a folder of Market-style names: identities and cameras from the names
    assert (a.pids >= 0).all() and set(a.camids.tolist()) == {1}
    assert a.fingerprint == b.fingerprint and a.meta["input_size"] == [64, 32]


def test_python_api_gives_the_cli_features(setup):
    tmp, ckpt, root = setup
    assert (
        _embed(ckpt, tmp / "q.npz", "--dataset", "market1501", "--root", root, "--split", "query")
        == 0
    )
    fs = load_features(tmp / "q.npz")
    model = adaptreid.load(ckpt, device="cpu", batch_size=2)
    from_paths = model.embed(fs.paths)
    np.testing.assert_allclose(from_paths, fs.features, atol=1e-6)
    pil = [Image.open(p) for p in fs.paths]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in fs.paths]
    np.testing.assert_allclose(model.embed(pil), fs.features, atol=1e-6)
    np.testing.assert_allclose(model.embed(arrays), fs.features, atol=1e-6)
    mixed = model.embed([fs.paths[0], pil[1], arrays[2]])
    np.testing.assert_allclose(mixed, fs.features[:3], atol=1e-6)
    assert model.fingerprint == fs.fingerprint and model.embed([]).shape == (0, model.feat_dim)
    with pytest.raises(adaptreid.errors.DatasetError, match="uint8 array of shape"):
        model.embed([np.zeros((8, 8), np.float32)])


def test_search_on_arrays():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(3, 8)).astype(np.float32), rng.normal(size=(10, 8)).astype(np.float32)
    hits = adaptreid.search(q, g, top=4)
    d = np.sqrt(((q[:, None] - g[None]) ** 2).sum(-1))
    np.testing.assert_array_equal(hits.indices, np.argsort(d, axis=1, kind="stable")[:, :4])
    np.testing.assert_allclose(hits.distances, np.sort(d, axis=1)[:, :4], rtol=1e-5)
    # excluded pairs never come back; fewer matches than `top` pad with -1 / inf
    exclude = np.zeros((3, 10), bool)
    exclude[:, 3:] = True
    hits = adaptreid.search(q, g, top=5, exclude=exclude)
    assert (hits.indices[:, 3:] == -1).all() and np.isinf(hits.distances[:, 3:]).all()
    assert set(hits.indices[:, :3].ravel().tolist()) <= {0, 1, 2}
    reranked = adaptreid.search(q, g, top=10, rerank=adaptreid.Rerank(k1=4, k2=2))
    assert sorted(reranked.indices[0].tolist()) == list(range(10))
    with pytest.raises(ValueError, match="same D"):
        adaptreid.search(q, g[:, :4])


def test_search_cli_terminal_and_page(setup, capsys):
    tmp, ckpt, root = setup
    assert (
        _embed(
            ckpt, tmp / "gal.npz", "--dataset", "market1501", "--root", root, "--split", "gallery"
        )
        == 0
    )
    query = sorted((root / "query").iterdir())[:2]
    base = ["search", "--checkpoint", str(ckpt), "--query", *map(str, query), "-q", "--top", "3"]
    capsys.readouterr()
    for gallery, extra in (
        (tmp / "gal.npz", []),
        (root / "bounding_box_test", ["--rerank", "--k1", "4", "--k2", "2"]),
    ):
        page = tmp / "search.html"
        assert main([*base, "--gallery", str(gallery), "--html", str(page), *extra]) == 0
        out = capsys.readouterr().out
        assert out.count("query ") == 2 and out.count(" d=") == 6
        assert out.count("same-id") + out.count("other-id") == 6
        html = page.read_text()
        assert html.count("<img") == 2 + 6 and "data:image/png;base64," in html
        assert html.count("&#10003; #") + html.count("&#10007; #") == 6  # a mark per match


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("adaptreid: error:"), err
    for n in needles:
        assert n in err, err
    return err


def test_bad_input_one_clear_line(setup, tmp_path, capsys):
    _, ckpt, root = setup
    # a folder with no images
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    argv = ["embed", "--checkpoint", str(ckpt), "-q", "--out", str(tmp_path / "f.npz")]
    _one_line_error(capsys, [*argv, "--images", str(tmp_path / "empty")], "no images", "empty")
    # a checkpoint that is not a model: a text file, a torch file without a model in it
    (tmp_path / "notes.pt").write_text("hello")
    save_checkpoint({"epoch": 3}, tmp_path / "state.pt")
    for bad, why in (
        ("notes.pt", "not an adaptreid model"),
        ("state.pt", "not an adaptreid checkpoint"),
    ):
        argv_bad = ["embed", "--checkpoint", str(tmp_path / bad), "--images", str(root / "query")]
        err = _one_line_error(capsys, [*argv_bad, "--out", str(tmp_path / "f.npz")], bad, why)
        assert "--backbone" not in err  # evaluate's way out; embed has no such option
    # a features file from another model
    _, other = _checkpoint(tmp_path / "other")
    assert _embed(other, tmp_path / "other.npz", "--images", root / "bounding_box_test") == 0
    q = str(sorted((root / "query").iterdir())[0])
    search = ["search", "--checkpoint", str(ckpt), "--query", q, "-q", "--html", ""]
    _one_line_error(
        capsys, [*search, "--gallery", str(tmp_path / "other.npz")], "another model", "other.npz"
    )
    # a file that is not a features file
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    _one_line_error(capsys, [*search, "--gallery", str(tmp_path / "junk.npz")], "junk.npz")


def test_an_image_that_does_not_decode_is_skipped_and_listed(setup, tmp_path, capsys):
    _, ckpt, root = setup
    folder = tmp_path / "crops"
    for i in range(3):
        write_jpeg(folder / f"person{i}.jpg", color=40 * i)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "crops.npz"
    assert _embed(ckpt, out, "--images", folder) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 unreadable image(s)" in printed and "broken.jpg" in printed
    fs = load_features(out)
    assert len(fs) == 3 and "broken.jpg" not in " ".join(fs.paths)
    assert (fs.camids == -1).all() and fs.pids is None  # names carry no camera / identity
    # search with a broken query image: listed, the others searched
    q = [str(folder / "broken.jpg"), str(folder / "person0.jpg")]
    argv = ["search", "--checkpoint", str(ckpt), "--gallery", str(out), "--html", "", "-q"]
    assert main([*argv, "--query", *q]) == 0
    printed = capsys.readouterr().out
    assert "broken.jpg" in printed and printed.count("query ") == 1
    _one_line_error(capsys, [*argv, "--query", q[0]], "none of the images", "broken.jpg")


def test_cli_error_has_no_traceback_in_a_subprocess(tmp_path):
    (tmp_path / "empty").mkdir()
    cmd = [sys.executable, "-m", "adaptreid", "embed", "--checkpoint", "x.pt"]
    cmd += ["--images", str(tmp_path / "empty"), "--out", str(tmp_path / "f.npz")]
    out = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "no images" in out.stderr


def test_parquet_when_pyarrow_is_installed(setup, tmp_path):
    pytest.importorskip("pyarrow")
    _, ckpt, root = setup
    assert _embed(ckpt, tmp_path / "g.parquet", "--images", root / "bounding_box_test") == 0
    assert _embed(ckpt, tmp_path / "g.npz", "--images", root / "bounding_box_test") == 0
    a, b = load_features(tmp_path / "g.parquet"), load_features(tmp_path / "g.npz")
    np.testing.assert_array_equal(a.features, b.features)
    assert a.paths == b.paths and a.fingerprint == b.fingerprint


def test_evaluate_with_an_empty_train_folder(setup, tmp_path, capsys):
    """An evaluation-only copy whose bounding_box_train/ exists but is empty."""
    import shutil

    _, ckpt, root = setup
    copy = tmp_path / "eval-only"
    for sub in ("query", "bounding_box_test"):
        shutil.copytree(root / sub, copy / sub)
    (copy / "bounding_box_train").mkdir()
    argv = ["evaluate", "--checkpoint", str(ckpt), "--dataset", "market1501", "--root", str(copy)]
    assert main([*argv, "-q", "--num-workers", "0"]) == 0
    assert "mAP" in capsys.readouterr().out
