"""``amp: auto``: precision and memory layout chosen per machine by a cached timing probe
(adaptreid.runtime.precision)."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest
import torch
from torch import nn

from adaptreid.runtime import precision as P
from adaptreid.runtime.precision import ProbeSettings, cache_path, probe_key, resolve_precision


class Tiny(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 5)

    def forward(self, x):
        f = self.bn(self.conv(x)).relu().mean((2, 3))
        return {"feat": f, "logits": self.fc(f)} if self.training else f


class FakeTimer:
    """Seconds per step by variant; counts the calls."""

    def __init__(self, fp32: float, bf16: float):
        self.t = {"none": fp32, "bf16": bf16}
        self.calls: list[tuple[str, bool]] = []

    def __call__(self, variant):
        self.calls.append((variant["amp"], variant["channels_last"]))
        return self.t[variant["amp"]]


@pytest.mark.parametrize(
    "amp, cl, want",
    [
        ("none", False, ("none", False)),
        ("fp32", True, ("none", True)),
        ("bf16", True, ("bf16", True)),
        ("bf16", False, ("bf16", False)),
        ("fp16", False, ("fp16", False)),
    ],
)
def test_explicit_values_pass_through(tmp_path, amp, cl, want):
    timer = FakeTimer(1.0, 0.1)
    out = resolve_precision(
        amp,
        Tiny(),
        (16, 8),
        "cpu",
        channels_last=cl,
        probe=ProbeSettings(cache_dir=tmp_path, timer=timer),
    )
    assert out[:2] == want and isinstance(out[2], str) and "\n" not in out[2]
    assert timer.calls == []  # no probe
    assert not cache_path(tmp_path).exists()  # and nothing cached


def test_bad_amp_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="amp"):
        resolve_precision("int8", Tiny(), (16, 8), "cpu", probe=ProbeSettings(cache_dir=tmp_path))
    with pytest.raises(ValueError, match="mode"):
        resolve_precision(
            "auto", Tiny(), (16, 8), "cpu", mode="eval", probe=ProbeSettings(cache_dir=tmp_path)
        )


@pytest.mark.parametrize(
    "fp32, bf16, want", [(1.0, 0.5, ("bf16", True)), (0.5, 1.0, ("none", False))]
)
def test_probe_picks_the_faster_variant_interleaved(tmp_path, fp32, bf16, want):
    timer = FakeTimer(fp32, bf16)
    amp, cl, reason = resolve_precision(
        "auto",
        Tiny(),
        (16, 8),
        "cpu",
        probe=ProbeSettings(cache_dir=tmp_path, timer=timer, repeats=3),
    )
    assert (amp, cl) == want
    assert "probed" in reason and "\n" not in reason
    # interleaved: fp32, bf16, fp32, bf16, ...; only the two candidates, never fp16
    assert timer.calls == [("none", False), ("bf16", True)] * 3


def test_near_tie_keeps_fp32(tmp_path):
    timer = FakeTimer(1.0, 0.97)  # 3% faster: within the margin
    assert resolve_precision(
        "auto", Tiny(), (16, 8), "cpu", probe=ProbeSettings(cache_dir=tmp_path, timer=timer)
    )[:2] == ("none", False)


def test_cache_is_written_then_read(tmp_path, monkeypatch):
    monkeypatch.setenv(P.CACHE_ENV, str(tmp_path / "envdir"))
    model = Tiny()
    first = FakeTimer(1.0, 0.4)
    out1 = resolve_precision("auto", model, (16, 8), "cpu", probe=ProbeSettings(timer=first))
    path = tmp_path / "envdir" / "precision.json"
    assert path.is_file()  # the environment variable names the folder
    data = json.loads(path.read_text())
    key = probe_key(model, (16, 8), "cpu", mode="train", batch_size=32)
    assert data[key]["amp"] == "bf16" and data[key]["channels_last"] is True
    assert data[key]["fp32_step_s"] == 1.0 and data[key]["bf16_channels_last_step_s"] == 0.4

    # second call: answered from the cache, the timer is not called
    second = FakeTimer(0.1, 9.0)  # would pick fp32 if it were asked
    out2 = resolve_precision("auto", Tiny(), (16, 8), "cpu", probe=ProbeSettings(timer=second))
    assert out2[:2] == out1[:2] == ("bf16", True) and second.calls == []
    assert "cached" in out2[2]

    # another input size, mode or architecture is another key: probed again
    third = FakeTimer(0.1, 1.0)
    assert resolve_precision("auto", model, (32, 16), "cpu", probe=ProbeSettings(timer=third))[
        :2
    ] == ("none", False)
    assert third.calls
    fourth = FakeTimer(0.1, 1.0)
    assert resolve_precision(
        "auto", model, (16, 8), "cpu", mode="extract", probe=ProbeSettings(timer=fourth)
    )[:2] == (
        "none",
        False,
    )
    assert fourth.calls
    fifth = FakeTimer(0.1, 1.0)
    assert resolve_precision(
        "auto", Tiny(width=6), (16, 8), "cpu", probe=ProbeSettings(timer=fifth)
    )[:2] == (
        "none",
        False,
    )
    assert fifth.calls
    assert len(json.loads(path.read_text())) == 4  # every entry kept

    # use_cache=False: always probes, never writes
    sixth = FakeTimer(1.0, 0.1)
    assert resolve_precision(
        "auto",
        model,
        (16, 8),
        "cpu",
        probe=ProbeSettings(cache_dir=tmp_path / "other", timer=sixth, use_cache=False),
    )[:2] == ("bf16", True)
    assert sixth.calls and not (tmp_path / "other" / "precision.json").exists()


def test_corrupt_cache_is_reprobed_and_repaired(tmp_path):
    path = cache_path(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    timer = FakeTimer(1.0, 0.2)
    assert resolve_precision(
        "auto", Tiny(), (16, 8), "cpu", probe=ProbeSettings(cache_dir=tmp_path, timer=timer)
    )[:2] == ("bf16", True)
    assert timer.calls and len(json.loads(path.read_text())) == 1


def _writer(args):
    cache_dir, i = args
    from adaptreid.runtime.precision import _write_entry, cache_path

    for j in range(20):
        _write_entry(cache_path(cache_dir), f"key-{i}-{j}", {"amp": "none", "channels_last": False})
    return i


def test_concurrent_writes_keep_every_entry(tmp_path):
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        pool.map(_writer, [(str(tmp_path), i) for i in range(4)])
    data = json.loads(cache_path(tmp_path).read_text())
    assert len(data) == 80 and all(f"key-{i}-{j}" in data for i in range(4) for j in range(20))


def test_auto_on_cpu_never_picks_fp16_with_the_real_probe(tmp_path):
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    for mode in ("train", "extract"):
        amp, cl, reason = resolve_precision(
            "auto",
            model,
            (16, 8),
            "cpu",
            mode=mode,
            probe=ProbeSettings(cache_dir=tmp_path, steps=1, repeats=1, batch_size=4),
        )
        assert amp in ("none", "bf16") and cl == (amp == "bf16")
        assert "fp32" in reason and "ms" in reason
    # the probe works on copies: weights, BN statistics and mode untouched
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx avx2 fma

processor\t: 1
cpu family\t: 25
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx avx2 fma
"""
ZEN5 = ZEN3.replace("25", "26").replace("avx2 fma", "avx2 fma avx512f avx512_bf16")


def test_cpu_identity_tells_apart_cpus_that_share_a_model_name():
    # the two AMD machines of BENCHMARKS.md both report "AMD EPYC"; bf16 is 10x slower on
    # one and faster on the other, so a shared cache must not give one the other's choice
    zen3, zen5 = P.cpu_identity(ZEN3), P.cpu_identity(ZEN5)
    assert zen3 == "AMD EPYC [family 25 model 1]"
    assert zen5 == "AMD EPYC [family 26 model 1 avx512f avx512_bf16]"
    assert P.cpu_identity("") == "" and P.cpu_identity("flags: avx2\n") == ""


def test_cache_key_follows_the_cpu_identity(monkeypatch):
    model = Tiny()
    keys = []
    for info in (ZEN3, ZEN5):
        monkeypatch.setattr(P, "cpu_model", lambda info=info: P.cpu_identity(info))
        keys.append(probe_key(model, (16, 8), "cpu"))
    assert keys[0] != keys[1] and "family 25" in keys[0] and "avx512_bf16" in keys[1]


class SequenceTimer:
    """Per-variant step times taken in turn from lists (one entry per round)."""

    def __init__(self, fp32: list[float], bf16: list[float]):
        self.seq = {"none": list(fp32), "bf16": list(bf16)}
        self.calls = 0

    def __call__(self, variant):
        self.calls += 1
        return self.seq[variant["amp"]].pop(0)


def test_a_clear_answer_stops_after_the_minimum_rounds(tmp_path):
    timer = SequenceTimer([1.0] * 9, [0.5] * 9)
    amp, _, reason = resolve_precision(
        "auto",
        Tiny(),
        (16, 8),
        "cpu",
        probe=ProbeSettings(cache_dir=tmp_path, timer=timer, repeats=3, max_repeats=9),
    )
    assert amp == "bf16" and timer.calls == 6  # 3 rounds x 2 variants
    assert "3 rounds" in reason
    entry = next(iter(json.loads(cache_path(tmp_path).read_text()).values()))
    assert entry["rounds"] == 3 and entry["ratio"] == 0.5


@pytest.mark.parametrize(
    "bf16, want",
    [
        # rounds straddle the margin: more rounds, then the median ratio decides
        ([0.90, 1.00, 0.92, 0.91, 0.99, 0.93, 0.90, 0.96, 0.91], "bf16"),  # median 0.92
        ([0.90, 1.00, 0.97, 0.99, 0.96, 0.93, 1.02, 0.96, 0.91], "none"),  # median 0.96
    ],
)
def test_rounds_that_straddle_the_margin_probe_longer(tmp_path, bf16, want):
    timer = SequenceTimer([1.0] * 9, bf16)
    amp, _, reason = resolve_precision(
        "auto",
        Tiny(),
        (16, 8),
        "cpu",
        probe=ProbeSettings(cache_dir=tmp_path, timer=timer, repeats=3, max_repeats=9, margin=0.95),
    )
    assert amp == want and timer.calls == 18 and "9 rounds" in reason


def test_one_answer_per_network_whatever_its_classifier_size(tmp_path):
    """Two source models of one network (751 and 702 identities) share one cache entry, so
    one machine gives them one answer; another network does not."""
    from adaptreid.models.build import HeadSettings, build_model

    market = build_model("small_cnn", num_classes=751, pretrained=None)
    duke = build_model("small_cnn", num_classes=702, pretrained=None)
    assert probe_key(market, (16, 8), "cpu") == probe_key(duke, (16, 8), "cpu")
    first = FakeTimer(1.0, 0.5)
    second = FakeTimer(0.5, 1.0)  # would answer the other way if it were asked
    out1 = resolve_precision(
        "auto", market, (16, 8), "cpu", probe=ProbeSettings(cache_dir=tmp_path, timer=first)
    )
    out2 = resolve_precision(
        "auto", duke, (16, 8), "cpu", probe=ProbeSettings(cache_dir=tmp_path, timer=second)
    )
    assert out1[:2] == out2[:2] == ("bf16", True) and second.calls == []
    other = build_model(
        "small_cnn", num_classes=751, head=HeadSettings(embedding_dim=64), pretrained=None
    )
    assert probe_key(other, (16, 8), "cpu") != probe_key(market, (16, 8), "cpu")
