"""PAST (Zhang et al., ICCV 2019): PCB's feature layout, the ranking score matrix, RTL
batches (sampling ranges, soft margin), the classifier initialisation of eq. 7, the stage
optimisers, and Algorithm 1 end to end through ``adaptreid adapt`` with a resume in the
middle of a stage."""

import json

import numpy as np
import pytest
import torch
from conftest import COMMON, adapt_args, past_args, train_tiny_source, write_identity_market

from adaptreid.cli import main
from adaptreid.config import load_config
from adaptreid.data.datasets import Sample
from adaptreid.data.sampler import PKSampler
from adaptreid.engine.extract import l2_normalize
from adaptreid.engine.loop import adapt
from adaptreid.errors import ConfigError
from adaptreid.losses.past_loss import (
    ConservativeLoss,
    RankingTripletAugmented,
    promoting_loss,
    split_rtl_batch,
)
from adaptreid.methods.past import conservative_optimizer, past_model, promoting_optimizer
from adaptreid.methods.past_rtl import RankingTripletBatchSampler, ranking_triplet_loader
from adaptreid.models import HeadSettings, build_model
from adaptreid.models.pcb import PCBHead
from adaptreid.pseudo.centroids import cluster_means
from adaptreid.pseudo.kreciprocal import jaccard_distance, sparse_distance_to_dense
from adaptreid.pseudo.ranking import ranked_neighbors
from adaptreid.rundir.checkpoint import load_checkpoint

# --------------------------------------------------------------------------------------------
# PCB head: feature layout
# --------------------------------------------------------------------------------------------


def test_pcb_parts_follow_horizontal_stripes():
    torch.manual_seed(0)
    head = PCBHead(8, embedding_dim=5, num_parts=3).eval()
    assert (head.num_parts, head.part_dim, head.feat_dim) == (3, 5, 15)
    fmap = torch.randn(2, 8, 6, 4)  # 6 rows: stripes of 2 rows each
    base = head(fmap)
    assert base["feat"].shape == (2, 15) and base["bn_feat"] is base["feat"]
    assert base["logits"] is None
    for k in range(3):
        changed = fmap.clone()
        changed[:, :, 2 * k : 2 * k + 2] += 3.0 * torch.randn(2, 8, 2, 4)
        diff = (head(changed)["feat"] - base["feat"]).abs().sum(0)
        for j in range(3):
            moved = bool(diff[head.part_slice(j)].sum() > 1e-6)
            assert moved == (j == k), (k, j)
    # each part is ReLU(BN(W_k . mean of its stripe)), eval-mode BN = identity here
    stripe0 = fmap[:, :, 0:2].mean(dim=(2, 3))
    expected = torch.relu(stripe0 @ head.embedding[0].T)
    assert torch.allclose(base["feat"][:, head.part_slice(0)], expected, atol=1e-5)


def test_pcb_uneven_stripes_and_model_interface():
    # ResNet-50 at 384 x 128 gives H = 24, not a multiple of PAST's 9 parts
    head = PCBHead(16, num_classes=4, num_parts=9)
    assert head.part_dim == 256 and head.feat_dim == 9 * 256
    out = head(torch.randn(3, 16, 24, 8))
    assert out["feat"].shape == (3, 2304) and out["logits"].shape == (3, 4)
    with pytest.raises(ConfigError):
        PCBHead(16, pooling="gem")

    model = build_model(
        "resnet18", head=HeadSettings(name="pcb", options={"num_parts": 4}, embedding_dim=6)
    )
    assert model.num_parts == 4 and model.feat_dim == 24
    assert build_model("resnet18").num_parts == 1
    model.eval()
    feats = l2_normalize(model(torch.randn(5, 3, 64, 32)), model.num_parts)
    norms = feats.view(5, 4, 6).norm(dim=2)
    assert torch.allclose(norms, torch.ones(5, 4), atol=1e-5)  # each part separately


def test_pcb_classifier_takes_cluster_means():
    head = PCBHead(8, embedding_dim=3, num_parts=2)
    w = torch.randn(5, 6)
    head.reset_classifier(5, w)
    assert head.num_classes == 5 and head.classifier.bias is None
    assert torch.equal(head.classifier.weight, w)
    x = torch.randn(4, 8, 4, 2)
    out = head.train()(x)
    assert torch.allclose(out["logits"], out["feat"] @ w.T, atol=1e-5)  # eq. 6: W^T x
    with pytest.raises(ConfigError, match="expected"):
        head.reset_classifier(5, torch.randn(5, 3))
    head.reset_classifier(0)
    assert head.classifier is None and head.train()(x)["logits"] is None


def test_cluster_mean_weights_eq7():
    feats = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0], [9.0, 9.0], [0.0, 1.0]])
    labels = np.array([0, 0, 1, -1, 1])
    w = cluster_means(feats, labels)
    assert torch.allclose(w, torch.tensor([[2.0, 1.0], [0.0, 3.0]]))


# --------------------------------------------------------------------------------------------
# ranking score matrix (eq. 2)
# --------------------------------------------------------------------------------------------


def test_ranked_neighbors_orders_jaccard_rows_and_fills_missing_ranks():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    jac = jaccard_distance(x, k1=4, k2=2)
    dense = sparse_distance_to_dense(jac)
    table = ranked_neighbors(jac, 12)
    full = ranked_neighbors(jac, 12, features=x)
    assert (table == -1).any()  # some rows store fewer than 12 neighbours
    eucl = ((x[:, None] - x[None]) ** 2).sum(-1)
    for i in range(50):
        ranking = [j for j in np.argsort(dense[i], kind="stable") if j != i and dense[i, j] < 1]
        k = min(len(ranking), 12)
        assert table[i, :k].tolist() == ranking[:k]
        assert (table[i, k:] == -1).all()
        assert full[i, :k].tolist() == ranking[:k]
        # past the stored entries: the euclidean order of the samples not listed yet
        rest = [j for j in np.argsort(eucl[i], kind="stable") if j != i and j not in ranking]
        assert full[i, k:].tolist() == rest[: 12 - k]
    with pytest.raises(ConfigError, match="smaller eta"):
        ranked_neighbors(jac, 50)


# --------------------------------------------------------------------------------------------
# RTL batches: sampling ranges and the soft margin
# --------------------------------------------------------------------------------------------


def _rtl_sampler(eta=3, n_ids=6, per_id=4, seed=0):
    labels = np.repeat(np.arange(n_ids), per_id)
    labels[::5] = -1  # outliers: never anchors, still positives / negatives
    n = len(labels)
    ranked = np.stack([np.roll(np.delete(np.arange(n), i), -i) for i in range(n)])[:, : 2 * eta]
    pk = PKSampler(labels.tolist(), 2, 2, seed=seed, unlabelled_ok=True)
    return RankingTripletBatchSampler(pk, ranked, eta, seed=seed), labels, ranked


def test_rtl_batches_sample_positives_in_top_eta_and_negatives_in_next_eta():
    eta = 3
    sampler, labels, ranked = _rtl_sampler(eta)
    pos_ranks, neg_ranks = set(), set()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) > 0
        for keys in batches:
            idx, role, rank = (np.array(v) for v in zip(*keys))
            b = int((role == 0).sum())
            assert role.tolist() == [0] * b + [1] * b + [2] * b
            anchors = idx[:b]
            assert (labels[anchors] >= 0).all()  # anchors come from T_U
            assert (rank[:b] == 0).all()
            pr, nr = rank[b : 2 * b], rank[2 * b :]
            assert ((pr >= 1) & (pr <= eta)).all()
            assert ((nr > eta) & (nr <= 2 * eta)).all()
            assert (idx[b : 2 * b] == ranked[anchors, pr - 1]).all()
            assert (idx[2 * b :] == ranked[anchors, nr - 1]).all()
            pos_ranks |= set(pr.tolist())
            neg_ranks |= set(nr.tolist())
    assert pos_ranks == {1, 2, 3} and neg_ranks == {4, 5, 6}
    # the draw depends only on (seed, epoch): a resumed run draws the same triplets
    again, _, _ = _rtl_sampler(eta)
    again.set_epoch(7)
    sampler.set_epoch(7)
    assert list(again) == list(sampler)


def test_conservative_loss_soft_margin_on_a_split_batch():
    eta, m = 4, 0.3
    # anchors at 0; positives at distance 0.2, 0.1; negatives at 0.4, 0.5 (1-d features)
    feat = torch.tensor([[0.0], [0.0], [0.2], [0.1], [0.4], [0.5]], requires_grad=True)
    batch = {
        "pid": torch.tensor([0, 1, 0, -1, 2, -1]),
        "rtl_role": torch.tensor([0, 0, 1, 1, 2, 2]),
        "rtl_rank": torch.tensor([0, 0, 1, 4, 8, 5]),
    }
    a, p, n, pr, nr = split_rtl_batch(feat, batch)
    assert pr.tolist() == [1, 4] and nr.tolist() == [8, 5]
    crit = ConservativeLoss(eta=eta, margin=m, use_ctl=False)
    loss, parts = crit({"feat": feat}, batch)
    # eq. 4: [|P_p - P_n| / eta * m + d_ap - d_an]_+ , mean over anchors
    expected = (max(0.0, 7 / 4 * m + 0.2 - 0.4) + max(0.0, 1 / 4 * m + 0.1 - 0.5)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert parts["rtl"] == pytest.approx(expected, abs=1e-5)
    loss.backward()
    assert feat.grad[2:].abs().sum() > 0  # positives and negatives receive gradients

    both = ConservativeLoss(eta=eta, margin=m, lam=0.5)
    total, parts = both({"feat": feat}, batch)
    assert total.item() == pytest.approx(parts["rtl"] + 0.5 * parts["ctl"], abs=1e-6)
    ctl_only = ConservativeLoss(eta=eta, margin=m, use_rtl=False)
    total, parts = ctl_only({"feat": feat}, batch)
    assert "rtl" not in parts and total.item() == pytest.approx(parts["ctl"])  # weight 1
    with pytest.raises(ConfigError):
        ConservativeLoss(use_ctl=False, use_rtl=False)


def test_rtl_augmented_criterion_sees_only_anchors():
    base = promoting_loss(3, 2)
    crit = RankingTripletAugmented(base, weight=2.0, eta=2, margin=0.3)
    feat = torch.randn(6, 2)
    logits = torch.randn(6, 3)
    batch = {
        "pid": torch.tensor([0, 1, 2, -1, 0, -1]),
        "rtl_role": torch.tensor([0, 0, 1, 1, 2, 2]),
        "rtl_rank": torch.tensor([0, 0, 1, 2, 3, 4]),
    }
    out = {"feat": feat, "bn_feat": feat, "logits": logits}
    total, parts = crit(out, batch)
    ce, _ = base({"feat": feat[:2], "logits": logits[:2]}, {"pid": batch["pid"][:2]})
    assert float(total) == pytest.approx(float(ce) + 2.0 * parts["rtl"], abs=1e-5)


def test_past_loader_batches_hold_anchors_positives_negatives(tmp_path):
    from PIL import Image

    train = []
    for i in range(12):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (8, 16), (i * 20, 0, 0)).save(path)
        train.append(Sample(str(path), 100 + i // 3, i % 2))
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, -1, 3, 3, 3])
    cfg = load_config(None, ["data.height=16", "data.width=8", "data.batch_size=4"])
    cfg.data.num_instances, cfg.data.num_workers = 2, 0
    ranked = np.stack([np.roll(np.delete(np.arange(12), i), -i) for i in range(12)])[:, :4]
    loader = ranking_triplet_loader(cfg, train, labels, ranked=ranked, eta=2, seed=1)
    batch = next(iter(loader))
    assert batch["img"].shape == (12, 3, 16, 8)
    assert batch["rtl_role"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    anchors = batch["index"][:4].numpy()
    assert (labels[anchors] >= 0).all()
    assert (batch["pid"][:4].numpy() == labels[anchors]).all()  # pid = pseudo-label
    plain = ranking_triplet_loader(cfg, train, labels, seed=1)
    assert next(iter(plain))["img"].shape[0] == 4  # no RTL: anchors only
    cfg.data.batch_size = 16  # P = 8 > 4 clusters: P shrinks to 4, as in MSPLR's loader
    assert next(iter(ranking_triplet_loader(cfg, train, labels, seed=1)))["img"].shape[0] == 8


# --------------------------------------------------------------------------------------------
# model conversion and the stage optimisers (section 3.1)
# --------------------------------------------------------------------------------------------


def test_past_model_keeps_the_source_trunk_and_stage_learning_rates():
    cfg = load_config(
        "configs/past/base.yaml",
        [
            "model.backbone=resnet18",
            "model.head_options.num_parts=3",
            "model.head_options.parts=stripes",
        ],
    )
    source = build_model("resnet18", num_classes=7)  # a BNNeck source model
    model = past_model(cfg, source)
    assert model.arch["head"] == "pcb" and model.num_parts == 3 and model.num_classes == 0
    for k, v in source.backbone.state_dict().items():
        assert torch.equal(v, model.backbone.state_dict()[k]), k
    assert past_model(cfg, model) is model  # already the configured network
    with pytest.raises(ConfigError, match="same backbone"):
        past_model(cfg, build_model("resnet34"))

    lrs = {g["name"]: g["lr"] for g in conservative_optimizer(cfg, model, 1).param_groups}
    assert lrs == pytest.approx({"trunk": 1e-4, "embedding": 2e-4})
    model.reset_classifier(4)
    opt = promoting_optimizer(cfg, model, 3)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({"classifier": 1e-3, "rest": 5e-5})
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    assert opt.param_groups[0]["weight_decay"] == 5e-4
    lrs = {g["name"]: g["lr"] for g in promoting_optimizer(cfg, model, 4).param_groups}
    assert lrs == pytest.approx({"classifier": 1e-4, "rest": 5e-6})  # x0.1 after 3 iterations


# --------------------------------------------------------------------------------------------
# Algorithm 1 end to end
# --------------------------------------------------------------------------------------------


def _records(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def source_and_target(tmp_path_factory):
    """A BNNeck ResNet-18 source checkpoint and a synthetic target, shared by the tests."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("past_src")
    ckpt = train_tiny_source(tmp)
    tgt = write_identity_market(
        tmp / "tgt", ids=tuple(range(30, 38)), test_ids=(50, 51, 52), seed=5
    )
    return ckpt, tgt


def test_past_adapt_cli_alternates_stages_and_resumes(tmp_path, monkeypatch, source_and_target):
    torch.set_num_threads(1)
    ckpt, tgt = source_and_target

    # eq. 7 checked live: at the first promoting epoch the classifier holds the cluster means
    # of the per-part normalised features of the model that just finished its conservative stage
    from adaptreid.data.loaders import build_test_loader
    from adaptreid.data.transforms import build_transforms
    from adaptreid.engine import trainer as trainer_mod
    from adaptreid.engine.extract import extract_features

    original = trainer_mod.Trainer.train_epoch
    seen = []

    def check_init(self, epoch):
        if self.desc.endswith("promoting") and epoch == 1:
            samples = self.loader.dataset.samples
            loader = build_test_loader(samples, build_transforms(32, 16, train=False), 64)
            f = extract_features(self.model, loader, normalize=True, verbose=False)
            labels = np.array([s.pid for s in samples])
            w = cluster_means(f.feats, labels)  # (C, p d): part k in columns [k d, (k+1) d)
            per_part = w.reshape(len(w), 2, 8).transpose(0, 1)  # one classifier per part
            assert torch.allclose(self.model.head.classifier.weight, per_part, atol=1e-5)
            seen.append(self.desc)
        return original(self, epoch)

    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", check_init)
    args = ["adapt", "--config", "configs/past/base.yaml", "-q"]
    assert main([*args, *past_args(tmp_path, ckpt, tgt, "full")]) == 0
    assert seen == ["step 1 promoting", "step 2 promoting"]
    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", original)

    run = tmp_path / "runs" / "full"
    recs = _records(run)
    steps = [r for r in recs if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [0, 1, 2]
    assert steps[0]["stage"] == "direct_transfer" and steps[1]["stage"] == "past"
    labels = [r for r in recs if r["kind"] == "labels" and not r.get("probe")]
    assert [r["step"] for r in labels] == [1, 2]
    assert all("quality_f1" in r and "quality_rtl_pos_precision" in r for r in labels)
    epochs = [(r["step"], r["epoch"], r["stage"]) for r in recs if r["kind"] == "epoch"]
    stages = [(1, 1, "conservative"), (1, 1, "promoting"), (1, 2, "promoting")]
    assert epochs == stages + [(2, e, s) for _, e, s in stages]
    conservative = [r for r in recs if r.get("stage") == "conservative"]
    assert all("rtl" in r and "ctl" in r and "ce" not in r for r in conservative)
    assert all("ce" in r for r in recs if r.get("stage") == "promoting")
    assert [r for r in recs if r["kind"] == "final"]
    for name in ("report.md", "steps.png", "loss.png", "ranklist.png"):
        assert (run / name).is_file(), name
    final = load_checkpoint(run / "checkpoints" / "last.pt")
    assert final["arch"]["head"] == "pcb" and final["method"] == "past"

    # the same run, stopped inside iteration 2's promoting stage, then resumed
    cfg = load_config(
        "configs/past/base.yaml", past_args(tmp_path, ckpt, tgt, "cut"), command="adapt"
    )
    cut = tmp_path / "runs" / "cut"

    class Stop(Exception):
        pass

    def stop(self, epoch):
        if self.desc == "step 2 promoting" and epoch == 2:
            raise Stop
        return original(self, epoch)

    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", stop)
    with pytest.raises(Stop):
        adapt(cfg, verbose=False)
    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", original)
    state = load_checkpoint(cut / "checkpoints" / "last.pt")["loop"]
    assert state["step"] == 2 and state["stage"] == 1  # inside the promoting stage
    adapt(cfg, resume=True, verbose=False)
    resumed = load_checkpoint(cut / "checkpoints" / "last.pt")
    assert np.array_equal(resumed["loop"]["labels"].numpy(), final["loop"]["labels"].numpy())
    # a replay on the same machine in the same process: equal up to float noise (a property
    # of resume, not a training outcome; both runs take exactly the same steps)
    for k, v in final["model"].items():
        assert torch.allclose(v.float(), resumed["model"][k].float(), atol=1e-5), k
    cut_epochs = [
        (r["step"], r["epoch"], r["stage"]) for r in _records(cut) if r["kind"] == "epoch"
    ]
    assert cut_epochs == epochs  # no duplicate, nothing lost


def test_table1_conservative_only_rows(tmp_path, source_and_target):
    torch.set_num_threads(1)
    ckpt, tgt = source_and_target
    extra = [
        "method.use_promoting=false",
        "method.use_ctl=false",  # the "RTL" row of Table 1
        "adapt.max_steps=1",
    ]
    cfg = load_config("configs/past/base.yaml", past_args(tmp_path, ckpt, tgt, "rtl", *extra))
    run = adapt(cfg, verbose=False)
    recs = _records(run.path)
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert [r["stage"] for r in epochs] == ["conservative"]
    assert all("rtl" in r and "ctl" not in r for r in epochs)
    assert [r["step"] for r in recs if r["kind"] == "step"] == [0, 1]  # evaluated after it
    assert load_checkpoint(run.last)["arch"]["num_classes"] == 0  # no classifier was added
    with pytest.raises(ConfigError, match="use_ctl"):
        bad = load_config(
            "configs/past/base.yaml",
            ["method.use_ctl=false", "method.use_rtl=false", f"output_dir={tmp_path}", "name=x"],
        )
        adapt(bad)


def test_rtl_inside_msplr(tmp_path, source_and_target):
    """Mixing (issue item 6): MSPLR's loss plus loss.rtl_weight * L_RTL on RTL batches."""

    torch.set_num_threads(1)
    ckpt, tgt = source_and_target
    extra = ["adapt.max_steps=1", "loss.rtl_weight=1.0", "method.rtl_eta=3", "pseudo.k1=6"]
    cfg = load_config("configs/msplr/base.yaml", adapt_args(tmp_path, ckpt, tgt, "mix", *extra))
    run = adapt(cfg, verbose=False)
    epochs = [r for r in _records(run.path) if r["kind"] == "epoch"]
    assert len(epochs) == 2
    assert all(r["rtl"] >= 0 and "triplet" in r and "ce" in r for r in epochs)
    ranked = load_checkpoint(run.last)["loop"]["extra"]["ranked"]
    assert ranked.shape == (32, 6)


def test_pcb_source_training_with_the_generic_reid_loss(tmp_path):
    """The PCB head trains on the labelled source with triplet + cross-entropy (the source
    presets configs/source/*_pcb.yaml), and PAST then keeps that network as is."""
    torch.set_num_threads(1)
    src = write_identity_market(tmp_path / "src", ids=tuple(range(1, 5)))
    args = [
        "train",
        "--config",
        "configs/source/market1501_pcb.yaml",
        "-q",
        f"output_dir={tmp_path / 'runs'}",
        "name=pcb",
        f"data.source_root={src}",
        "data.target=",
        "train.epochs=1",
        *COMMON,
        "model.backbone=resnet18",
        "model.pretrained=null",
        "model.head_options.num_parts=2",
        "model.head_options.parts=stripes",
        "model.embedding_dim=8",
    ]
    assert main(args) == 0
    ckpt = load_checkpoint(tmp_path / "runs" / "pcb" / "checkpoints" / "last.pt")
    assert ckpt["arch"]["head"] == "pcb" and ckpt["arch"]["num_classes"] == 4
    from adaptreid.rundir.model_io import model_from_checkpoint

    model, _ = model_from_checkpoint(tmp_path / "runs" / "pcb" / "checkpoints" / "last.pt")
    cfg = load_config(
        "configs/past/base.yaml",
        [
            "model.backbone=resnet18",
            "model.head_options.num_parts=2",
            "model.head_options.parts=stripes",
            "model.embedding_dim=8",
        ],
    )
    assert past_model(cfg, model) is model
