"""MSPLR with a memory contrastive term (issue 26, ``method.memory``): ``L = L_tri + L_ID +
0.005 L_c + w L_memory``. Off (``none``) the criterion is today's eq. 5 exactly; on, the total
is eq. 5 plus ``w`` times the memory loss computed by hand from its definition; the memory
starts from the per-(cluster, camera) normalised means of the step's unit features, moves by
``normalise(mu m + (1 - mu) f)`` after a step, is in the criterion's state, is there in both
stages; a tiny run records the term; a typo or a value out of range is refused; the two
memory presets are their MSPLR CPU pair plus the memory, nothing else."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import adapt_args

from adaptreid.config import load_config, to_dict
from adaptreid.data.datasets import Sample
from adaptreid.engine.loop import adapt
from adaptreid.errors import ConfigError
from adaptreid.losses.reid_loss import ReidLoss, build_reid_loss
from adaptreid.methods.msplr import FINETUNE, FROZEN, MSPLR
from adaptreid.models.build import build_model
from adaptreid.pseudo.labels import PseudoLabels

CAP = ["method.memory=camera_proxy", "method.temperature=0.5", "method.momentum=0.25"]

# a batch of 3 clusters x 2 images; the proxies of the hand-made memory: (cluster, camera)
PIDS, CAMS = [0, 0, 1, 1, 2, 2], [1, 2, 1, 1, 2, 3]
P_CLUSTER, P_CAMERA = [0, 0, 1, 2, 2], [1, 2, 1, 2, 3]


def _method(*overrides: str) -> MSPLR:
    cfg = load_config("msplr/base.yaml", ["train.freeze_epochs=1", *overrides])
    train = [Sample(f"x{i}.jpg", p, c) for i, (p, c) in enumerate(zip(PIDS, CAMS))]
    ctx = SimpleNamespace(
        device=torch.device("cpu"),
        target=SimpleNamespace(train=train),
        train_loader=lambda samples: samples,
    )
    return MSPLR(cfg, ctx)


def _model():
    torch.manual_seed(0)
    return build_model("small_cnn", num_classes=3, pretrained=None)


def _batch_and_outputs(dim: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    n = len(PIDS)
    outputs = {
        "feat": torch.randn(n, dim, generator=gen),
        "bn_feat": torch.randn(n, dim, generator=gen),
        "logits": torch.randn(n, 3, generator=gen),
    }
    return outputs, {"pid": torch.tensor(PIDS), "camid": torch.tensor(CAMS)}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _hand_memory(kind: str, dim: int, seed: int = 2) -> dict:
    rng = np.random.default_rng(seed)
    rows = 5 if kind == "camera_proxy" else 3
    memory = np.stack([_unit(rng.normal(size=dim)) for _ in range(rows)]).astype(np.float32)
    extra = {"memory": memory}
    if kind == "camera_proxy":
        extra |= {"proxy_cluster": np.array(P_CLUSTER), "proxy_camera": np.array(P_CAMERA)}
    return extra


def _reference(spec_base: torch.nn.Module, cfg, dim: int) -> ReidLoss:
    """Today's eq. 5 criterion, built on its own, with the stage's centres (a strict load:
    the same state keys)."""
    ref = build_reid_loss(cfg.loss, 3, dim)
    ref.load_state_dict(spec_base.state_dict())
    return ref


# ------------------------------------------------------------------------------ (a) none
def test_memory_none_is_todays_criterion_exactly():
    method, model = _method(), _model()
    assert method.opt.memory == "none"
    spec = method.build_stage(FINETUNE, model, np.array(PIDS), {})
    assert type(spec.criterion) is ReidLoss and spec.hooks.after_step is None
    outputs, batch = _batch_and_outputs(model.feat_dim)
    ref = _reference(spec.criterion, method.cfg, model.feat_dim)
    got, parts = spec.criterion(outputs, batch)
    want, want_parts = ref(outputs, batch)
    assert got.item() == want.item() and parts == want_parts
    assert not any(k.startswith("memory") for k in parts)


# ------------------------------------------------------------------------------ (b) the sum
def _cap_by_hand(f: np.ndarray, memory: np.ndarray, tau: float, lam: float, k: int) -> float:
    """CAP's L_intra + lambda L_inter, one image at a time (adaptreid.losses.camera_proxy's
    module docstring), on unit features f and the proxies P_CLUSTER / P_CAMERA."""
    proxies = range(len(P_CLUSTER))
    by_cam: dict[int, list[float]] = {}
    inter = []
    for i in range(len(f)):
        s = [float(memory[q] @ f[i]) / tau for q in proxies]
        j = next(q for q in proxies if (P_CLUSTER[q], P_CAMERA[q]) == (PIDS[i], CAMS[i]))
        same_cam = [q for q in proxies if P_CAMERA[q] == CAMS[i]]
        by_cam.setdefault(CAMS[i], []).append(
            -(s[j] - math.log(sum(math.exp(s[q]) for q in same_cam)))
        )
        pos = [q for q in proxies if P_CLUSTER[q] == PIDS[i]]
        neg = sorted((q for q in proxies if P_CLUSTER[q] != PIDS[i]), key=lambda q: -s[q])[:k]
        log_denom = math.log(sum(math.exp(s[q]) for q in pos + neg))
        inter.append(-sum(s[p] - log_denom for p in pos) / len(pos))
    l_intra = sum(sum(v) / len(v) for v in by_cam.values())
    return l_intra + lam * sum(inter) / len(f)


def _nce_by_hand(f: np.ndarray, memory: np.ndarray, tau: float) -> float:
    """ClusterNCE, -log exp(f.m_y / tau) / sum_c exp(f.m_c / tau), averaged over the batch."""
    out = []
    for i in range(len(f)):
        s = [float(m @ f[i]) / tau for m in memory]
        out.append(-(s[PIDS[i]] - math.log(sum(math.exp(x) for x in s))))
    return sum(out) / len(out)


@pytest.mark.parametrize("kind", ["camera_proxy", "cluster"])
def test_total_is_msplr_loss_plus_w_times_the_memory_loss_by_hand(kind):
    overrides = [f"method.memory={kind}", "method.memory_weight=0.7", "method.temperature=0.5"]
    if kind == "camera_proxy":
        overrides += ["method.inter_weight=0.4", "method.hard_negatives=2"]
    method, model = _method(*overrides), _model()
    extra = _hand_memory(kind, model.feat_dim)
    spec = method.build_stage(FINETUNE, model, np.array(PIDS), extra)
    outputs, batch = _batch_and_outputs(model.feat_dim)
    total, parts = spec.criterion(outputs, batch)
    msplr, msplr_parts = _reference(spec.criterion.base, method.cfg, model.feat_dim)(outputs, batch)
    f = outputs["bn_feat"].numpy().astype(np.float64)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    mem = extra["memory"].astype(np.float64)
    if kind == "camera_proxy":
        by_hand = _cap_by_hand(f, mem, tau=0.5, lam=0.4, k=2)
        assert {"memory_intra", "memory_inter", "memory_acc"} <= set(parts)
    else:
        by_hand = _nce_by_hand(f, mem, tau=0.5)
        assert "memory_nce" in parts
    assert parts["memory"] == pytest.approx(by_hand, rel=1e-5)
    assert total.item() == pytest.approx(msplr.item() + 0.7 * by_hand, rel=1e-5)
    assert {k: parts[k] for k in msplr_parts} == pytest.approx(msplr_parts)


def test_both_stages_get_the_memory_term_and_its_after_step_hook():
    method, model = _method(*CAP, "method.freeze=before_schedule"), _model()
    assert method.stages == (FROZEN, FINETUNE)
    extra = _hand_memory("camera_proxy", model.feat_dim)
    outputs, batch = _batch_and_outputs(model.feat_dim)
    for stage in method.stages:
        spec = method.build_stage(stage, model, np.array(PIDS), extra)
        assert spec.hooks.after_step is not None, stage
        assert "memory" in spec.criterion(outputs, batch)[1], stage


# ------------------------------------------------------------------------------ (c) init
class _StepFeatures:
    """What MSPLR.pseudo_labels reads of a step: raw features, cameras, the labels."""

    def __init__(self, features, camids, labels):
        self.features, self.camids, self._labels = features, np.asarray(camids), labels

    def cluster(self):
        return PseudoLabels(np.asarray(self._labels), stats={})


@pytest.mark.parametrize("kind", ["camera_proxy", "cluster"])
def test_memory_starts_from_the_normalised_means_of_unit_features(kind):
    rng = np.random.default_rng(4)
    # rows of very different norms, so that averaging raw rows would give other directions
    feats = rng.normal(size=(9, 6)) * rng.uniform(0.1, 20.0, size=(9, 1))
    labels = [1, 0, 1, -1, 0, 1, 2, 0, 2]
    camids = [5, 3, 5, 3, 7, 3, 7, 3, 7]
    method = _method(f"method.memory={kind}")
    result, extra = method.pseudo_labels(
        _StepFeatures(torch.as_tensor(feats, dtype=torch.float32), camids, labels)
    )
    assert result.labels.tolist() == labels
    if kind == "camera_proxy":  # by cluster, then camera: (0,3) (0,7) (1,3) (1,5) (2,7)
        keys = [(0, 3), (0, 7), (1, 3), (1, 5), (2, 7)]
        assert extra["proxy_cluster"].tolist() == [c for c, _ in keys]
        assert extra["proxy_camera"].tolist() == [k for _, k in keys]
        members = [[i for i in range(9) if (labels[i], camids[i]) == key] for key in keys]
    else:
        assert "proxy_cluster" not in extra
        members = [[i for i in range(9) if labels[i] == c] for c in range(3)]
    want = np.stack([_unit(np.mean([_unit(feats[i]) for i in m], axis=0)) for m in members])
    assert extra["memory"].dtype == np.float32
    np.testing.assert_allclose(extra["memory"], want, atol=1e-6)


def test_memory_none_adds_nothing_to_the_step():
    _, extra = _method().pseudo_labels(_StepFeatures(torch.randn(4, 3), [1, 2, 1, 2], [0, 0, 1, 1]))
    assert extra == {}


# ------------------------------------------------------------------------------ (d) update
def test_after_step_moves_each_entry_by_momentum_and_is_checkpointed():
    method, model = _method(*CAP), _model()
    extra = _hand_memory("camera_proxy", model.feat_dim)
    spec = method.build_stage(FINETUNE, model, np.array(PIDS), extra)
    state = spec.criterion.state_dict()
    assert "memory.memory" in state and any(k.startswith("base.") for k in state)
    # one image per proxy (0, 1, 2, 4), so each entry moves once; proxy 3 (cluster 2,
    # camera 2) sees no image
    batch = {"pid": torch.tensor([0, 0, 1, 2]), "camid": torch.tensor([1, 2, 1, 3])}
    bn_feat = torch.randn(4, model.feat_dim, generator=torch.Generator().manual_seed(7)) * 3
    spec.hooks.after_step({"bn_feat": bn_feat}, batch)
    got = spec.criterion.state_dict()["memory.memory"].numpy()
    m0, mu = extra["memory"].astype(np.float64), 0.25
    for i, j in enumerate([0, 1, 2, 4]):
        f = _unit(bn_feat[i].numpy().astype(np.float64))
        np.testing.assert_allclose(got[j], _unit(mu * m0[j] + (1 - mu) * f), atol=1e-6)
    np.testing.assert_allclose(got[3], m0[3], atol=1e-7)


# ------------------------------------------------------------------------------ (e) a run
def test_tiny_run_with_camera_proxy_memory_records_the_term(tiny_adaptation):
    tmp, ckpt, tgt = tiny_adaptation
    args = [
        *adapt_args(tmp, ckpt, tgt, "memory"),
        "method.freeze=before_schedule",  # both stages: 1 frozen epoch, then 2
        "method.memory=camera_proxy",
        "method.temperature=0.07",
    ]
    cfg = load_config("msplr/base.yaml", args, command="adapt")
    run = adapt(cfg, verbose=False)
    recs = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert len(epochs) == 6 and sorted({r["step"] for r in epochs}) == [1, 2]
    assert [r["body_frozen"] for r in epochs] == [1.0, 0.0, 0.0] * 2
    for r in epochs:
        for key in ("memory", "memory_intra", "memory_inter", "triplet", "ce", "center"):
            assert math.isfinite(r[key]), (key, r)
        assert 0 <= r["memory_acc"] <= 1
    assert [r["step"] for r in recs if r["kind"] == "step"] == [0, 1, 2]


# ------------------------------------------------------------------------------ (f) checks
def test_a_memory_typo_is_refused_when_the_config_is_loaded():
    with pytest.raises(ConfigError) as err:
        load_config("msplr/base.yaml", ["method.memory=camera_proxies"])
    text = str(err.value)
    assert "method.memory" in text and "Did you mean 'camera_proxy'?" in text


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["method.momentum=1.0"], "method.momentum must be in [0, 1)"),
        (["method.temperature=0"], "method.temperature must be > 0"),
        (["method.memory_weight=-1"], "method.memory_weight must be >= 0"),
        (["method.hard_negatives=-1"], "method.hard_negatives must be >= 0"),
        (["loss.rtl_weight=0.5"], "not supported"),
    ],
)
def test_memory_values_out_of_range_are_refused(overrides, message):
    cfg = load_config("msplr/base.yaml", ["method.memory=camera_proxy", *overrides])
    with pytest.raises(ConfigError) as err:
        MSPLR.validate(cfg)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["method.temperature=0.07"], "method.temperature"),  # no memory: nothing reads it
        (["method.memory_weight=2"], "method.memory_weight"),
        (["method.memory=cluster", "method.inter_weight=0.3"], "method.inter_weight"),
    ],
)
def test_memory_settings_it_would_not_read_are_refused(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_config("msplr/base.yaml", overrides, command="adapt")
    with pytest.raises(ConfigError, match=key):
        MSPLR.validate(load_config("msplr/base.yaml", overrides))


# ------------------------------------------------------------------------------ presets
@pytest.mark.parametrize("pair", ["market1501_to_dukemtmc", "dukemtmc_to_market1501"])
def test_memory_presets_are_the_cpu_pair_plus_the_memory_only(pair):
    """They restate their pair (presets inherit two levels at most): no drift allowed."""
    mem = to_dict(load_config(f"msplr/{pair}_memory_cpu.yaml", command="adapt"))
    cpu = to_dict(load_config(f"msplr/{pair}_cpu.yaml", command="adapt"))
    assert mem.pop("name") == f"msplr_{pair}_memory_cpu"
    assert cpu.pop("name") == f"msplr_{pair}_cpu"
    method = {"memory": "camera_proxy", "memory_weight": 1.0, "temperature": 0.07}
    assert mem.pop("method") == {**cpu.pop("method"), **method, "momentum": 0.2}
    assert mem == cpu
