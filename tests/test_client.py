"""A real client runs the exported model: BoxMOT's ONNX re-ID backend (the one its trackers
such as StrongSORT, BoT-SORT and DeepOCSORT call on detection crops) loads ``adaptreid
export --format onnx``'s file and gives our features.

Optional: skipped unless ``boxmot`` (``pip install --no-deps boxmot opencv-python-headless``)
and ``onnxruntime`` are installed. The interface test below needs only onnxruntime and checks
what the README promises any client: input ``images`` (N, 3, H, W) float32 RGB normalised
with the ImageNet mean / std, output ``features`` (N, D)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_export import _checkpoint

import adaptreid
from adaptreid.export.onnx import export_checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("client")
    _, ckpt = _checkpoint(tmp)  # small_cnn, input 64 x 32
    onnx = tmp / "adapted.onnx"
    export_checkpoint(ckpt, "onnx", onnx)
    return ckpt, onnx


def _crops(n=5, seed=0):
    """RGB uint8 crops at the model's input size (64 x 32), so that no resizing (whose
    interpolation differs between libraries) comes between the two sides."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (64, 32, 3), dtype=np.uint8) for _ in range(n)]


def test_boxmot_onnx_backend_gives_our_features(exported, monkeypatch):
    pytest.importorskip("boxmot")
    pytest.importorskip("cv2")
    from boxmot.reid.backends.onnx_backend import ONNXBackend

    # onnxruntime is installed: keep BoxMOT from pip-installing its own pinned version
    monkeypatch.setattr(ONNXBackend, "_ensure_onnxruntime_installed", lambda self: None)
    ckpt, onnx = exported
    backend = ONNXBackend(weights=onnx, device=torch.device("cpu"), half=False)
    assert backend.input_shape == (64, 32)  # read from the graph
    crops = _crops()
    frame_bgr = np.ascontiguousarray(np.concatenate(crops, axis=1)[:, :, ::-1])  # as cv2 reads
    boxes = np.array([[32 * i, 0, 32 * (i + 1), 64] for i in range(len(crops))], np.float32)
    theirs = backend.get_features(boxes, frame_bgr)  # crop, normalise, run, L2-normalise
    ours = adaptreid.load(ckpt, device="cpu", amp="none").embed(crops)  # fp32, as the file
    assert theirs.shape == ours.shape == (5, 128)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)


def test_exported_interface_as_the_readme_states(exported):
    ort = pytest.importorskip("onnxruntime")
    ckpt, onnx = exported
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "images" and inp.type == "tensor(float)" and inp.shape[1:] == [3, 64, 32]
    assert out.name == "features" and out.shape[1] == 128
    meta = json.loads((onnx.parent / "adapted.onnx.json").read_text())
    mean, std = np.array(meta["input"]["mean"]), np.array(meta["input"]["std"])
    crops = _crops(3, seed=1)
    x = np.stack([(c / 255.0 - mean) / std for c in crops]).transpose(0, 3, 1, 2)
    feats = sess.run(None, {"images": x.astype(np.float32)})[0]
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)  # the README's last step
    ours = adaptreid.load(ckpt, device="cpu", amp="none").embed(crops)  # fp32, as the file
    np.testing.assert_allclose(feats, ours, atol=1e-5)
