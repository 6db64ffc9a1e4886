"""Export to ONNX / TorchScript: the exported model's features equal PyTorch's to 1e-4."""

from __future__ import annotations

import json

import pytest
import torch

from adaptreid.cli import main
from adaptreid.errors import ConfigError
from adaptreid.export.onnx import ExportError, export_checkpoint, export_model
from adaptreid.models import HeadSettings, build_model
from adaptreid.rundir.checkpoint import save_checkpoint


def _trained_like(model):
    """Give BN layers non-trivial running statistics so that eval mode is exercised."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model.backbone(torch.randn(8, 3, 64, 32) * 2 + 0.5)
    return model.eval()


def _checkpoint(tmp_path, backbone="small_cnn", **kw):
    model = _trained_like(build_model(backbone, num_classes=5, head=HeadSettings.from_arch(kw)))
    path = tmp_path / "best.pt"
    save_checkpoint(
        {
            "format": "adaptreid-checkpoint",
            "version": 1,
            "arch": model.arch,
            "model": model.state_dict(),
            "input_size": [64, 32],
            "config": {"eval": {"metric": "cosine"}},
        },
        path,
    )
    return model, path


#: PCB as the PAST presets build it: EANet's 9 max-pooled regions, one classifier per part
#: (the 64 x 32 test input gives a 4-row map: regions narrower than a stripe, still exported)
PCB_PAST = {
    "head": "pcb",
    "pooling": "max",
    "embedding_dim": 16,
    "head_options": {"parts": "eanet", "classifier": "per_part"},
}


def _onnx_features(path, x):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {"images": x.numpy()})[0])


@pytest.mark.parametrize(
    "backbone,kw",
    [
        ("small_cnn", {}),
        ("mobilenet_v2", {}),
        ("resnet18", {"head": "pcb", "head_options": {"num_parts": 4}, "embedding_dim": 32}),
        ("resnet18", PCB_PAST),
    ],
)
def test_onnx_matches_pytorch_with_onnxruntime(tmp_path, backbone, kw):
    model, ckpt = _checkpoint(tmp_path, backbone, **kw)
    report = export_checkpoint(ckpt, "onnx", tmp_path / "m.onnx")
    assert report.max_abs_diff <= 1e-4 and report.checked_with == "onnxruntime"
    # an independent batch, of a size the export never saw (dynamic batch axis)
    x = torch.randn(5, 3, 64, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = model(x)
    got = _onnx_features(tmp_path / "m.onnx", x)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    meta = json.loads((tmp_path / "m.onnx.json").read_text())
    assert meta["input"]["shape"] == ["N", 3, 64, 32]
    assert meta["output"]["shape"] == ["N", ref.shape[1]]
    assert meta["output"]["metric"] == "cosine"


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    "backbone,kw",
    [
        ("mobilenet_v2", {}),
        ("resnet18", {"head": "pcb", "head_options": {"num_parts": 4}, "embedding_dim": 8}),
        ("resnet18", PCB_PAST),
    ],
)
def test_torchscript_matches_pytorch(tmp_path, backbone, kw):
    model, ckpt = _checkpoint(tmp_path, backbone, **kw)
    report = export_checkpoint(ckpt, "torchscript")
    assert report.path == tmp_path / "best.torchscript.pt"
    loaded = torch.jit.load(str(report.path))
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-4, rtol=0)


def test_export_refuses_a_model_that_disagrees(tmp_path, monkeypatch):
    import adaptreid.export.onnx as ex

    model = _trained_like(build_model("small_cnn"))
    monkeypatch.setattr(
        ex, "_run_torchscript", lambda path, xs: [x.new_zeros(len(x), 128) for x in xs]
    )
    with pytest.raises(ExportError, match="differ from PyTorch"):
        export_model(model, tmp_path / "m.pt", "torchscript", height=64, width=32)


def test_bad_format_and_cli(tmp_path, capsys):
    _, ckpt = _checkpoint(tmp_path)
    with pytest.raises(ConfigError, match="onnx, torchscript"):
        export_checkpoint(ckpt, "tflite")
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "best.onnx" in out and "onnxruntime" in out
    assert (tmp_path / "best.onnx").is_file()
    assert not list(tmp_path.glob(".*.tmp"))
    # not a checkpoint: a clear error, exit status 2
    bad = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    assert main(["export", "--checkpoint", str(bad), "--format", "onnx"]) == 2
    assert "not an adaptreid checkpoint" in capsys.readouterr().err
