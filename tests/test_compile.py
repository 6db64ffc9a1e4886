"""``train.compile``: the backbone through torch.compile, chosen per machine by a probe
(adaptreid.runtime.compile, ReidModel.set_compiled)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from adaptreid.models.build import build_model
from adaptreid.runtime.compile import resolve_compile
from adaptreid.runtime.precision import Precision, ProbeSettings, cache_path


class FakeTimer:
    def __init__(self, eager: float, compiled: float):
        self.t = {False: eager, True: compiled}
        self.calls: list[bool] = []

    def __call__(self, variant):
        self.calls.append(bool(variant["compile"]))
        return self.t[bool(variant["compile"])]


def _model():
    torch.manual_seed(0)
    return build_model("small_cnn", num_classes=5, pretrained=None)


@pytest.mark.parametrize("setting, want", [("never", False), ("always", True)])
def test_never_and_always_pass_through_without_a_probe(tmp_path, setting, want):
    timer = FakeTimer(1.0, 0.1)
    out, reason = resolve_compile(
        setting, _model(), (32, 16), "cpu", probe=ProbeSettings(cache_dir=tmp_path, timer=timer)
    )
    assert out is want and "as set" in reason and timer.calls == []
    with pytest.raises(ValueError, match="compile must be one of"):
        resolve_compile("yes", _model(), (32, 16), "cpu")


@pytest.mark.parametrize("eager, compiled, want", [(1.0, 0.6, True), (1.0, 0.97, False)])
def test_auto_keeps_compile_only_when_faster_by_the_margin_and_caches(
    tmp_path, eager, compiled, want
):
    timer = FakeTimer(eager, compiled)
    probe = ProbeSettings(cache_dir=tmp_path, timer=timer)
    prec = Precision("none", False)
    out, reason = resolve_compile("auto", _model(), (32, 16), "cpu", precision=prec, probe=probe)
    assert out is want and "probed" in reason
    assert timer.calls[:2] == [False, True]  # interleaved: eager, then compiled
    entry = next(iter(json.loads(cache_path(tmp_path).read_text()).values()))
    assert entry["compile"] is want and entry["rounds"] == 3
    # asked again: from the cache; another precision is another entry
    again = FakeTimer(0.1, 9.0)
    probe2 = ProbeSettings(cache_dir=tmp_path, timer=again)
    out2, reason2 = resolve_compile("auto", _model(), (32, 16), "cpu", precision=prec, probe=probe2)
    assert out2 is want and "cached" in reason2 and again.calls == []
    resolve_compile(
        "auto", _model(), (32, 16), "cpu", precision=Precision("bf16", True), probe=probe2
    )
    assert again.calls


def test_a_compiled_backbone_gives_the_eager_loss_and_features():
    """torch.compile (inductor) of the backbone: the same training loss and gradients, the
    same eval features, to float tolerance; state_dict and copies are unaffected."""
    eager = _model()
    compiled = copy.deepcopy(eager)
    compiled.set_compiled(train=True, extract=True)
    assert compiled.compiled_modes == (True, True)
    x = torch.randn(8, 3, 32, 16, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 5
    losses = []
    for m in (eager, compiled):
        m.train()
        loss = torch.nn.functional.cross_entropy(m(x)["logits"], y)
        loss.backward()
        losses.append(loss)
    assert torch.allclose(losses[0], losses[1], rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        if p.grad is None:  # a frozen parameter (BNNeck's BN bias)
            assert q.grad is None and not p.requires_grad, name
            continue
        assert torch.allclose(p.grad, q.grad, rtol=1e-3, atol=1e-5), name
    eager.eval()
    compiled.eval()
    with torch.no_grad():
        assert torch.allclose(eager(x), compiled(x), rtol=1e-4, atol=1e-5)
    # the compiled module is neither saved nor copied
    assert list(compiled.state_dict()) == list(eager.state_dict())
    clone = copy.deepcopy(compiled)
    assert "_compiled_body" in compiled.__dict__ and "_compiled_body" not in clone.__dict__
    assert clone.compiled_modes == (True, True)
    compiled.set_compiled()
    assert compiled.compiled_modes == (False, False) and "_compiled_body" not in compiled.__dict__


def test_a_run_applies_and_records_its_choice():
    from adaptreid.config import load_config
    from adaptreid.engine.builders import run_precision

    cfg = load_config(None, ["train.compile=always", "data.height=32", "data.width=16"])
    model = _model()
    record = run_precision(cfg, model, torch.device("cpu"))
    assert model.compiled_modes == (True, True)
    assert record["kind"] == "precision"
    assert record["train"]["compile"] is True and record["extract"]["compile"] is True
    assert record["train"]["amp"] == "none" and "as set" in record["train"]["compile_reason"]
    off = run_precision(load_config(None, []), model, torch.device("cpu"))
    assert model.compiled_modes == (False, False) and off["train"]["compile"] is False


def test_log_precision_appends_only_a_changed_choice(tmp_path):
    """A resume that makes the run's last choice again adds no record; one that chose
    otherwise (another machine, a cleared cache) is recorded, reasons aside."""
    from adaptreid.engine.builders import log_precision
    from adaptreid.rundir.run import RunDir

    run = RunDir(tmp_path)

    def rec(amp, compiled, reason="probe"):
        mode = {"amp": amp, "channels_last": amp == "bf16", "reason": reason}
        return {
            "kind": "precision",
            "train": {**mode, "compile": compiled},
            "extract": {**mode, "compile": False},
        }

    assert log_precision(run, rec("bf16", False))
    run.log_metrics({"kind": "epoch", "epoch": 1})
    assert not log_precision(run, rec("bf16", False, reason="cached"))
    assert log_precision(run, rec("none", False))
    assert log_precision(run, rec("none", True))
    assert not log_precision(run, rec("none", True))
    kinds = [(r["kind"], r.get("train", {}).get("amp")) for r in run.read_metrics()]
    assert kinds == [
        ("precision", "bf16"),
        ("epoch", None),
        ("precision", "none"),
        ("precision", "none"),
    ]
