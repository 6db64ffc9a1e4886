"""Tests of adaptreid.models: torchvision / IBN-Net key layouts, shapes, heads, ReidModel and
safe weight loading. Small inputs (64x32, batch 2) keep the file fast."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptreid.errors import CheckpointError, ConfigError
from adaptreid.models import (
    BACKBONES,
    BNNeck,
    HeadSettings,
    ReidModel,
    build_model,
    load_pretrained,
    model_from_arch,
)
from adaptreid.models import weights as weights_mod
from adaptreid.models.mobilenet_v2 import mobilenet_v2
from adaptreid.models.pcb import PCBHead, part_rows
from adaptreid.models.resnet import IBN, resnet18, resnet50, resnet50_ibn_a

SHARED = Path(os.environ.get("ADAPTREID_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MBV2_FILE = SHARED / "weights" / "mobilenet_v2_imagenet_features.pth"
MARKET_QUERY = SHARED / "data" / "market1501" / "Market-1501-v15.09.15" / "query"

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a small shared machine, oversubscribed threads make these
    tiny forward passes several times slower. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _x(n: int = 2, h: int = 64, w: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(0))


# -- an independent description of torchvision's key names -------------------------------------


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}.{s}" for s in BN]


def torchvision_resnet_keys(
    bottleneck: bool, layers: tuple[int, ...], ibn_a: bool = False
) -> list[str]:
    """torchvision's resnet state_dict keys (with fc), IBN-a naming if asked."""
    keys = ["conv1.weight", *_bn("bn1")]
    n_convs = 3 if bottleneck else 2
    for li, n in enumerate(layers, start=1):
        for b in range(n):
            p = f"layer{li}.{b}"
            for c in range(1, n_convs + 1):
                keys.append(f"{p}.conv{c}.weight")
                if c == 1 and ibn_a and li < 4:
                    keys += [f"{p}.bn1.IN.weight", f"{p}.bn1.IN.bias", *_bn(f"{p}.bn1.BN")]
                else:
                    keys += _bn(f"{p}.bn{c}")
            if b == 0 and (bottleneck or li > 1):
                keys += [f"{p}.downsample.0.weight", *_bn(f"{p}.downsample.1")]
    return keys + ["fc.weight", "fc.bias"]


def test_resnet18_keys_match_torchvision():
    sd = resnet18().state_dict()
    expected = torchvision_resnet_keys(False, (2, 2, 2, 2))
    assert len(expected) == 122  # torchvision resnet18: 122 entries including fc
    assert set(sd) == set(expected) - {"fc.weight", "fc.bias"}
    assert len(sd) == 120
    for k in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.1.bn2.num_batches_tracked",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "layer4.1.conv2.weight",
    ]:
        assert k in sd
    assert "layer1.0.downsample.0.weight" not in sd  # BasicBlock layer1 keeps 64 channels
    assert sd["layer4.1.conv2.weight"].shape == (512, 512, 3, 3)
    assert sd["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)


def test_resnet50_keys_match_torchvision():
    m = resnet50()
    sd = m.state_dict()
    expected = torchvision_resnet_keys(True, (3, 4, 6, 3))
    assert len(expected) == 320
    assert set(sd) == set(expected) - {"fc.weight", "fc.bias"}
    assert m.out_channels == 2048
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert sd["layer3.5.conv3.weight"].shape == (1024, 256, 1, 1)
    assert sd["layer4.2.bn3.running_var"].shape == (2048,)
    assert not any(k.startswith("fc.") for k in sd)


def test_resnet50_ibn_a_keys_match_official_ibnnet():
    m = resnet50_ibn_a()
    sd = m.state_dict()
    expected = torchvision_resnet_keys(True, (3, 4, 6, 3), ibn_a=True)
    assert set(sd) == set(expected) - {"fc.weight", "fc.bias"}
    assert len(sd) == 344  # 318 + 13 IBN blocks x 2 (IN.weight, IN.bias)
    assert isinstance(m.layer1[0].bn1, IBN) and isinstance(m.layer3[5].bn1, IBN)
    assert isinstance(m.layer4[0].bn1, nn.BatchNorm2d)  # layer4: plain BN
    assert isinstance(m.bn1, nn.BatchNorm2d)  # standard stem
    # half of the channels are IN (affine, no running stats), the rest BN
    assert sd["layer1.0.bn1.IN.weight"].shape == (32,)
    assert sd["layer1.0.bn1.BN.running_mean"].shape == (32,)
    assert sd["layer3.0.bn1.IN.bias"].shape == (128,)
    assert sd["layer3.0.bn1.BN.weight"].shape == (128,)
    assert "layer1.0.bn1.IN.running_mean" not in sd
    assert "layer4.0.bn1.weight" in sd and "layer2.3.bn2.weight" in sd
    assert torch.all(sd["layer2.1.bn1.IN.weight"] == 1) and torch.all(
        sd["layer2.1.bn1.IN.bias"] == 0
    )


def test_ibn_normalises_halves_differently():
    ibn = IBN(8).train()
    x = torch.randn(4, 8, 5, 3) * 3 + torch.arange(4.0).view(4, 1, 1, 1)
    y = ibn(x)
    inst = y[:, :4]  # instance norm: every (sample, channel) has mean 0
    assert torch.allclose(inst.mean(dim=(2, 3)), torch.zeros(4, 4), atol=1e-5)
    batch = y[:, 4:]  # batch norm: per channel over the batch, not per sample
    assert torch.allclose(batch.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5)
    assert not torch.allclose(batch.mean(dim=(2, 3)), torch.zeros(4, 4), atol=1e-2)
    assert ibn.BN.num_batches_tracked.item() == 1


def _mobilenet_expected_samples() -> dict[str, tuple[int, ...]]:
    return {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.0.1.running_var": (32,),
        "features.1.conv.0.0.weight": (32, 1, 3, 3),  # t=1: depthwise first
        "features.1.conv.1.weight": (16, 32, 1, 1),
        "features.1.conv.2.num_batches_tracked": (),
        "features.2.conv.0.0.weight": (96, 16, 1, 1),
        "features.2.conv.1.0.weight": (96, 1, 3, 3),
        "features.2.conv.2.weight": (24, 96, 1, 1),
        "features.2.conv.3.bias": (24,),
        "features.14.conv.1.0.weight": (576, 1, 3, 3),
        "features.17.conv.2.weight": (320, 960, 1, 1),
        "features.18.0.weight": (1280, 320, 1, 1),
        "features.18.1.running_mean": (1280,),
    }


def test_mobilenet_v2_keys_match_torchvision():
    m = mobilenet_v2()
    sd = m.state_dict()
    assert len(sd) == 312 and m.out_channels == 1280
    for k, shape in _mobilenet_expected_samples().items():
        assert tuple(sd[k].shape) == shape, k
    assert not any(k.startswith("classifier") for k in sd)
    assert set(mobilenet_v2(last_stride=1).state_dict()) == set(sd)


@pytest.mark.shared
@pytest.mark.skipif(not MBV2_FILE.is_file(), reason=f"shared weight file absent: {MBV2_FILE}")
def test_mobilenet_v2_matches_shared_file_exactly():
    file_sd = torch.load(MBV2_FILE, map_location="cpu", weights_only=True)
    sd = mobilenet_v2().state_dict()
    assert set(file_sd) == set(sd)
    assert all(file_sd[k].shape == sd[k].shape for k in sd)


@pytest.mark.parametrize(
    ("factory", "last_stride", "shape"),
    [
        (resnet18, 2, (2, 512, 2, 1)),
        (resnet18, 1, (2, 512, 4, 2)),
        (resnet50, 1, (2, 2048, 4, 2)),
        (resnet50, 2, (2, 2048, 2, 1)),
        (resnet50_ibn_a, 1, (2, 2048, 4, 2)),
        (mobilenet_v2, 2, (2, 1280, 2, 1)),
        (mobilenet_v2, 1, (2, 1280, 4, 2)),
    ],
)
def test_backbone_output_shapes(factory, last_stride, shape):
    m = factory(last_stride=last_stride)
    with torch.no_grad():
        assert tuple(m(_x()).shape) == shape
    assert m.out_channels == shape[1]


def test_resnet_keys_do_not_depend_on_last_stride():
    assert set(resnet18(last_stride=1).state_dict()) == set(resnet18(last_stride=2).state_dict())


def test_init_kaiming_and_bn_ones():
    m = resnet18()
    assert torch.all(m.bn1.weight == 1) and torch.all(m.bn1.bias == 0)
    w = m.layer1[0].conv1.weight  # kaiming fan_out: std = sqrt(2 / (64 * 9))
    assert abs(w.std().item() - (2 / (64 * 9)) ** 0.5) < 0.01


# -- heads ---------------------------------------------------------------------------------------


def test_bnneck_bias_frozen_and_classifier_init():
    head = BNNeck(2048, num_classes=751)
    assert head.bn.bias.requires_grad is False and head.bn.weight.requires_grad is True
    assert torch.all(head.bn.weight == 1)
    assert head.classifier.bias is None
    assert abs(head.classifier.weight.std().item() - 0.001) < 1e-4
    # a training step leaves the frozen bias at zero
    opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    out = head(torch.randn(4, 2048, 4, 2))
    F.cross_entropy(out["logits"], torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    assert head.bn.bias.grad is None and torch.all(head.bn.bias == 0)


@pytest.mark.parametrize("pooling", ["avg", "max", "gem"])
def test_bnneck_pooling(pooling):
    head = BNNeck(8, pooling=pooling).eval()
    fmap = torch.rand(2, 8, 4, 3) + 0.1
    feat = head(fmap)["feat"]
    ref = {
        "avg": fmap.mean((2, 3)),
        "max": fmap.amax((2, 3)),
        "gem": fmap.pow(3).mean((2, 3)).pow(1 / 3),
    }[pooling]
    assert torch.allclose(feat, ref, atol=1e-5)
    with pytest.raises(ConfigError, match="pooling"):
        BNNeck(8, pooling="median")


def test_bnneck_embedding_and_no_classifier():
    head = BNNeck(64, embedding_dim=16)
    assert head.feat_dim == 16
    out = head(torch.randn(2, 64, 4, 2))
    assert out["feat"].shape == (2, 16) and out["bn_feat"].shape == (2, 16)
    assert out["logits"] is None


def test_reset_classifier_with_weight():
    model = build_model("resnet18", num_classes=3)
    w = torch.randn(5, model.feat_dim)
    model.reset_classifier(5, weight=w)
    assert model.num_classes == 5 and model.arch["num_classes"] == 5
    assert torch.equal(model.head.classifier.weight, w)
    w.zero_()  # a copy, not a view of the caller's tensor
    assert model.head.classifier.weight.abs().sum() > 0
    out = model.train()(_x())
    assert out["logits"].shape == (2, 5)
    expected = out["bn_feat"] @ model.head.classifier.weight.T
    assert torch.allclose(out["logits"], expected, atol=1e-5)
    with pytest.raises(ConfigError, match="shape"):
        model.reset_classifier(4, weight=torch.zeros(4, 7))
    model.reset_classifier(7)  # fresh random classifier (MSPLR)
    assert abs(model.head.classifier.weight.std().item() - 0.001) < 3e-4
    model.reset_classifier(0)
    assert model.train()(_x())["logits"] is None


# -- ReidModel -----------------------------------------------------------------------------------


def test_reid_model_train_and_eval_outputs():
    model = build_model("resnet18", num_classes=4, last_stride=1)
    assert isinstance(model, ReidModel) and model.feat_dim == 512
    out = model.train()(_x())
    assert set(out) == {"feat", "bn_feat", "logits"}
    assert out["feat"].shape == (2, 512) and out["logits"].shape == (2, 4)
    model.eval()
    with torch.no_grad():
        emb = model(_x())
        parts = model.head(model.backbone(_x()))
    assert isinstance(emb, torch.Tensor) and emb.shape == (2, 512)
    assert torch.allclose(emb, parts["bn_feat"])
    before = build_model("resnet18", head=HeadSettings(neck_feat="before")).eval()
    with torch.no_grad():
        emb_b = before(_x())
        assert torch.allclose(emb_b, before.head(before.backbone(_x()))["feat"])
    with pytest.raises(ConfigError, match="neck_feat"):
        build_model("resnet18", head=HeadSettings(neck_feat="middle"))


def test_parameter_groups_and_freeze_body():
    model = build_model("resnet18", num_classes=3)
    body = {id(p) for p in model.body_parameters()}
    head = {id(p) for p in model.head_parameters()}
    assert body and head and not body & head
    assert body | head == {id(p) for p in model.parameters()}
    model.freeze_body()
    model.train()
    assert not model.backbone.training and model.head.training
    assert all(not p.requires_grad for p in model.body_parameters())
    stats = model.backbone.bn1.running_mean.clone()
    out = model(_x())
    out["logits"].sum().backward()
    assert torch.equal(model.backbone.bn1.running_mean, stats)  # BN stats do not drift
    assert model.head.classifier.weight.grad is not None
    model.freeze_body(False)
    assert model.backbone.training
    assert all(p.requires_grad for p in model.body_parameters())


def test_arch_rebuilds_model():
    model = build_model(
        "r50_ibn_a", num_classes=6, head=HeadSettings(pooling="gem", embedding_dim=32)
    )
    assert model.arch["backbone"] == "resnet50_ibn_a"
    clone = model_from_arch(model.arch)
    clone.load_state_dict(model.state_dict())  # strict: same keys and shapes
    assert clone.feat_dim == 32 and clone.num_classes == 6
    with pytest.raises(ConfigError, match="unknown entries"):
        model_from_arch({**model.arch, "colour": "red"})


def test_unknown_names_give_helpful_errors():
    with pytest.raises(ConfigError, match="resnet50"):
        build_model("resnet5O")
    with pytest.raises(ConfigError, match="last_stride"):
        build_model("resnet18", last_stride=3)
    with pytest.raises(ConfigError, match="head"):
        build_model("resnet18", head=HeadSettings(name="pcbb"))
    assert "resnet50_ibn_a" in BACKBONES and "mobilenet_v2" in BACKBONES


@pytest.mark.parametrize("backbone", ["resnet50_ibn_a", "mobilenet_v2"])
def test_bf16_autocast_and_channels_last(backbone):
    model = build_model(backbone, num_classes=3, head=HeadSettings(pooling="gem"))
    model = model.to(memory_format=torch.channels_last)
    x = _x().to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.train()(x)
        loss = F.cross_entropy(out["logits"].float(), torch.tensor([0, 2]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.body_parameters())
    model.eval()
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            emb = model(x)
        ref = model(x.contiguous())
    assert emb.dtype == torch.bfloat16 and emb.shape == (2, model.feat_dim)
    assert torch.isfinite(emb).all()
    # bf16 keeps 8 mantissa bits: embeddings of one forward pass agree with fp32 to a cosine
    # of ~0.999 whether the CPU computes bf16 natively (AVX-512 BF16, AMX) or emulates it;
    # 0.98 leaves room for any of those paths
    assert F.cosine_similarity(emb.float(), ref).min() > 0.98


# -- PCB head: part layouts and classifiers (PAST section 3.1) -----------------------------------


def _rows_probe(head: PCBHead, height: int) -> list[tuple[int, int]]:
    """The rows each part actually pools: channel r of the probe map is 1 on row r only, so
    part k's pooled vector is non-zero exactly at the rows of its region (avg or max)."""
    fmap = torch.eye(height).reshape(1, height, height, 1).expand(1, height, height, 3)
    pooled = head.pool_parts(fmap.contiguous())[0]  # (p, C = height)
    rows = []
    for k in range(pooled.shape[0]):
        hit = torch.nonzero(pooled[k] > 0).flatten().tolist()
        assert hit == list(range(hit[0], hit[-1] + 1)), (k, hit)  # contiguous rows
        rows.append((hit[0], hit[-1] + 1))
    return rows


@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("height", [1, 3, 4, 8, 9, 24])
def test_pcb_stripes_are_pytorch_adaptive_bins(pooling, height):
    head = PCBHead(height, num_parts=9, pooling=pooling)
    assert head.parts == "stripes" and head.classifier_type == "joint"  # the defaults
    assert _rows_probe(head, height) == part_rows("stripes", height, 9)


def test_pcb_stripe_bins_over_24_rows_are_uneven_and_overlap():
    rows = part_rows("stripes", 24, 9)
    assert [b - a for a, b in rows] == [3, 4, 3, 3, 4, 3, 3, 4, 3]
    shared = [rows[k][1] - rows[k + 1][0] for k in range(8)]
    assert shared == [1, 1, 0, 1, 1, 0, 1, 1]
    assert [b - a for a, b in part_rows("stripes", 24, 6)] == [4] * 6


@pytest.mark.parametrize("layout", ["eanet", "past_code"])
@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("height", [1, 3, 4, 7, 8, 9, 24])
def test_pcb_nine_region_layouts_pool_their_rows(layout, pooling, height):
    head = PCBHead(height, parts=layout, pooling=pooling)
    assert head.num_parts == 9
    assert _rows_probe(head, height) == part_rows(layout, height)


def test_eanet_regions_by_hand():
    # ResNet-50, last stride 1, 384 x 128: H = 24, six stripes of 4 rows (EANet, PAST code)
    stripes = [(0, 4), (4, 8), (8, 12), (12, 16), (16, 20), (20, 24)]
    assert part_rows("eanet", 24) == [*stripes, (0, 12), (12, 24), (0, 24)]
    # PAST's released PCBPool_nine: the second union is stripes 1-5
    assert part_rows("past_code", 24) == [*stripes, (0, 12), (4, 24), (0, 24)]
    # MobileNetV2, last stride 1, 128 x 64: H = 8, boundaries round(k * 8 / 6)
    assert part_rows("eanet", 8) == [
        (0, 1), (1, 3), (3, 4), (4, 5), (5, 7), (7, 8), (0, 4), (4, 8), (0, 8)
    ]  # fmt: skip
    assert part_rows("eanet", 4)[:6] == [(0, 1), (1, 2), (1, 2), (2, 3), (3, 4), (3, 4)]
    for h in range(6, 61):
        rows = part_rows("eanet", h)
        ends = [a for a, _ in rows[:6]] + [rows[5][1]]
        assert ends[0] == 0 and ends[-1] == h
        assert all(rows[k][1] == rows[k + 1][0] for k in range(5))  # a partition
        sizes = [b - a for a, b in rows[:6]]
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
        assert rows[6] == (0, rows[2][1]) and rows[7] == (rows[3][0], h)  # unions of stripes
        assert rows[8] == (0, h)
        if h % 6 == 0:
            assert sizes == [h // 6] * 6
    with pytest.raises(ConfigError, match="num_parts must be 9"):
        PCBHead(8, parts="eanet", num_parts=4)
    with pytest.raises(ConfigError, match="parts must be one of"):
        PCBHead(8, parts="pap")
    with pytest.raises(ConfigError, match="classifier must be one of"):
        PCBHead(8, classifier="shared")


def test_eanet_max_pooled_embedding_by_hand():
    torch.manual_seed(0)
    head = PCBHead(6, embedding_dim=4, parts="eanet", pooling="max").eval()
    fmap = torch.randn(3, 6, 8, 4)
    feat = head(fmap)["feat"]
    bn = head.bn
    for k, (a, b) in enumerate(part_rows("eanet", 8)):
        pooled = fmap[:, :, a:b].amax(dim=(2, 3))
        sl = head.part_slice(k)
        emb = pooled @ head.embedding[k].T
        expected = torch.relu((emb - bn.running_mean[sl]) / (bn.running_var[sl] + bn.eps).sqrt())
        assert torch.allclose(feat[:, sl], expected, atol=1e-5), k


def test_pcb_per_part_classifier_logits_and_eq7_init():
    head = PCBHead(8, num_classes=5, embedding_dim=3, num_parts=4, classifier="per_part")
    assert head.classifier.weight.shape == (4, 5, 3) and head.classifier.bias is None
    assert abs(head.classifier.weight.std().item() - 0.001) < 5e-4
    w = torch.randn(7, 12)  # eq. 7: cluster means of the concatenated features
    head.reset_classifier(7, w)
    assert head.num_classes == 7
    for k in range(4):  # part k's classifier: columns [3k, 3k + 3)
        assert torch.equal(head.classifier.weight[k], w[:, 3 * k : 3 * k + 3])
    w.zero_()  # copied, not a view
    assert head.classifier.weight.abs().sum() > 0
    w = head.classifier.weight.detach().clone()
    out = head.train()(torch.randn(6, 8, 8, 2))
    assert out["logits"].shape == (6, 4, 7)
    for k in range(4):
        ref = out["feat"][:, head.part_slice(k)] @ w[k].T
        assert torch.allclose(out["logits"][:, k], ref, atol=1e-6)
    out["logits"].sum().backward()
    assert head.classifier.weight.grad is not None
    with pytest.raises(ConfigError, match="expected"):
        head.reset_classifier(7, torch.randn(4, 7, 3))
    head.reset_classifier(0)
    assert head.classifier is None and head.train()(torch.randn(2, 8, 8, 2))["logits"] is None


def test_pcb_joint_classifier_unchanged():
    head = PCBHead(8, num_classes=5, embedding_dim=3, num_parts=2)  # defaults: joint
    assert isinstance(head.classifier, nn.Linear) and head.classifier.weight.shape == (5, 6)
    w = torch.randn(5, 6)
    head.reset_classifier(5, w)
    assert torch.equal(head.classifier.weight, w) and head.classifier.bias is None
    out = head.train()(torch.randn(4, 8, 4, 2))
    assert out["logits"].shape == (4, 5)
    assert torch.allclose(out["logits"], out["feat"] @ w.T, atol=1e-5)
    # one softmax over the sum of the part logits: per-part classifiers with the same
    # eq. 7 weight give the same logits part by part
    per = PCBHead(8, num_classes=5, embedding_dim=3, num_parts=2, classifier="per_part")
    per.reset_classifier(5, w)
    assert torch.allclose(per.classifier(out["feat"]).sum(1), out["logits"], atol=1e-5)


OLD_PCB_ARCH = {  # a PCB checkpoint's arch written before the parts / classifier options
    "backbone": "resnet18",
    "num_classes": 3,
    "last_stride": 1,
    "pooling": "avg",
    "embedding_dim": 8,
    "neck_feat": "after",
    "head": "pcb",
    "backbone_options": {},
    "head_options": {"num_parts": 4},
}


def test_old_pcb_arch_and_checkpoint_still_load(tmp_path):
    from adaptreid.rundir.checkpoint import save_checkpoint
    from adaptreid.rundir.model_io import model_from_checkpoint

    old = model_from_arch(OLD_PCB_ARCH)
    head = old.head
    assert (head.parts, head.classifier_type, head.pooling) == ("stripes", "joint", "avg")
    assert isinstance(head.classifier, nn.Linear) and head.classifier.weight.shape == (3, 32)
    # the state of the old layout, keys and shapes written out by hand
    sd = old.state_dict()
    assert sd["head.embedding"].shape == (4, 8, 512)
    assert sd["head.classifier.weight"].shape == (3, 32)
    path = tmp_path / "old.pt"
    save_checkpoint({"arch": OLD_PCB_ARCH, "model": sd, "input_size": [64, 32]}, path)
    model, _ = model_from_checkpoint(path)
    model.eval(), old.eval()
    with torch.no_grad():
        assert torch.equal(model(_x()), old(_x()))


@pytest.mark.parametrize(
    "options", [{"parts": "eanet", "classifier": "per_part"}, {"parts": "past_code"}]
)
def test_new_pcb_options_round_trip_through_arch(options):
    model = build_model(
        "resnet18", num_classes=4,
        head=HeadSettings(name="pcb", pooling="max", embedding_dim=6, options=options),
    )  # fmt: skip
    assert model.arch["head_options"] == options and model.num_parts == 9
    clone = model_from_arch(model.arch)
    clone.load_state_dict(model.state_dict())  # strict: same keys and shapes
    assert (clone.head.parts, clone.head.classifier_type) == (
        model.head.parts, model.head.classifier_type
    )  # fmt: skip
    model.reset_classifier(2, torch.randn(2, model.feat_dim))
    assert model.arch["num_classes"] == 2
    model_from_arch(model.arch).load_state_dict(model.state_dict())
    out = model.train()(_x())
    want = (2, 9, 2) if options.get("classifier") == "per_part" else (2, 2)
    assert out["logits"].shape == want and out["feat"].shape == (2, 54)


# -- weight loading ------------------------------------------------------------------------------


def _torchvision_like_file(path: Path, model: nn.Module, **extra) -> dict[str, torch.Tensor]:
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["fc.weight"] = torch.randn(1000, model.out_channels)
    sd["fc.bias"] = torch.zeros(1000)
    sd.update(extra)
    torch.save(sd, path)
    return sd


def test_load_clean_torchvision_file(tmp_path):
    src = resnet18()
    for p in src.parameters():
        nn.init.normal_(p)
    sd = _torchvision_like_file(tmp_path / "r18.pth", src)
    # an old file (PyTorch < 0.4) has no num_batches_tracked: that is not "missing"
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pth")
    dst = resnet18()
    report = load_pretrained(dst, tmp_path / "old.pth", strict=True)
    assert report.ok and report.missing == [] and report.unexpected == []
    assert sorted(report.unused_classifier) == ["fc.bias", "fc.weight"]
    assert "unused classifier keys (2)" in str(report)
    assert torch.equal(dst.layer3[1].conv2.weight, src.layer3[1].conv2.weight)


def test_load_report_lists_problems(tmp_path):
    src = resnet18()
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}  # DataParallel
    del sd["module.layer1.0.conv1.weight"]
    sd["module.layer2.0.conv1.weight"] = torch.randn(128, 64, 5, 5)
    sd["module.extra.weight"] = torch.randn(3)
    sd["module.fc.weight"] = torch.randn(10, 512)
    torch.save({"epoch": 3, "state_dict": sd}, tmp_path / "ckpt.pth")

    dst = resnet18()
    before = dst.layer2[0].conv1.weight.clone()
    with pytest.raises(CheckpointError, match="strict"):
        load_pretrained(dst, tmp_path / "ckpt.pth", strict=True)
    report = load_pretrained(dst, tmp_path / "ckpt.pth")
    assert report.missing == ["layer1.0.conv1.weight"]
    assert report.unexpected == ["extra.weight"]
    assert report.shape_mismatch == [("layer2.0.conv1.weight", (128, 64, 5, 5), (128, 64, 3, 3))]
    assert report.unused_classifier == ["fc.weight"]
    assert not report.ok
    assert torch.equal(dst.layer2[0].conv1.weight, before)  # mismatched tensor not loaded
    assert torch.equal(dst.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    text = str(report)
    for word in ("missing (1)", "unexpected (1)", "shape mismatch", "layer2.0.conv1.weight"):
        assert word in text


def test_strict_failure_loads_nothing(tmp_path):
    src = resnet18()
    sd = dict(src.state_dict())
    sd["extra"] = torch.zeros(1)
    torch.save(sd, tmp_path / "x.pth")
    dst = resnet18()
    before = dst.conv1.weight.clone()
    with pytest.raises(CheckpointError):
        load_pretrained(dst, tmp_path / "x.pth", strict=True)
    assert torch.equal(dst.conv1.weight, before)


def test_prefixes_backbone_file_into_model_and_model_file_into_backbone(tmp_path):
    src = build_model("resnet18", num_classes=2)
    torch.save({"model": src.state_dict()}, tmp_path / "full.pth")
    body = resnet18()
    report = load_pretrained(body, tmp_path / "full.pth")  # "backbone." stripped automatically
    assert report.renamed_prefix == "backbone." and report.missing == []
    assert torch.equal(body.conv1.weight, src.backbone.conv1.weight)

    torch.save(src.backbone.state_dict(), tmp_path / "body.pth")
    model = build_model("resnet18")
    report = load_pretrained(model, tmp_path / "body.pth", prefix_map={"": "backbone."})
    assert all(k.startswith("head.") for k in report.missing) and report.unexpected == []
    assert torch.equal(model.backbone.layer1[0].conv1.weight, src.backbone.layer1[0].conv1.weight)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # side effect when unpickled: creates a file


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Evil(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="non-tensor objects") as err:
        load_pretrained(resnet18(), path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pth"):
        load_pretrained(resnet18(), tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_pretrained(resnet18(), bad)
    torch.save({"a": 1}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="no tensors"):
        load_pretrained(resnet18(), tmp_path / "empty.pth")
    torch.save({"something.else": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="matches the model"):
        load_pretrained(resnet18(), tmp_path / "other.pth")


@pytest.fixture
def hub_dir(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def test_imagenet_without_network_explains(hub_dir, monkeypatch):
    monkeypatch.setattr(weights_mod, "_network_available", lambda url, timeout=3.0: False)
    url = weights_mod.KNOWN_URLS["resnet50_ibn_a"]
    with pytest.raises(CheckpointError, match="no network") as err:
        build_model("resnet50_ibn_a", pretrained="imagenet")
    assert url in str(err.value) and "local path" in str(err.value)
    with pytest.raises(CheckpointError, match="no known ImageNet"):
        load_pretrained(resnet18(), "imagenet", arch="lenet")


def test_imagenet_from_hub_cache(hub_dir, monkeypatch, caplog):
    monkeypatch.setattr(weights_mod, "_network_available", lambda url, timeout=3.0: False)
    src = resnet18()
    nn.init.normal_(src.conv1.weight)
    cache = hub_dir / "checkpoints"
    cache.mkdir(parents=True)
    _torchvision_like_file(cache / "resnet18-f37072fd.pth", src)
    with caplog.at_level(logging.INFO, logger="adaptreid"):
        model = build_model("r18", pretrained="imagenet")
    assert torch.equal(model.backbone.conv1.weight, src.conv1.weight)
    assert "loaded 120/120 tensors" in caplog.text and "resnet18-f37072fd.pth" in caplog.text
    body = resnet18()
    load_pretrained(body, "imagenet", arch="R18")  # an alias resolves to resnet18
    assert torch.equal(body.conv1.weight, src.conv1.weight)


# -- the real MobileNetV2 ImageNet weights -------------------------------------------------------


def _market_images(n_ids: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    names = sorted(os.listdir(MARKET_QUERY))
    pids = sorted({n[:4] for n in names})[:n_ids]
    files = [[n for n in names if n.startswith(p)][:2] for p in pids]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    images, labels = [], []
    for i, pair in enumerate(files):
        for name in pair:
            im = Image.open(MARKET_QUERY / name).convert("RGB").resize((64, 128))
            a = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
            images.append((a - mean) / std)
            labels.append(i)
    return torch.stack(images), torch.tensor(labels)


@pytest.mark.shared
@pytest.mark.skipif(
    not (MBV2_FILE.is_file() and MARKET_QUERY.is_dir()),
    reason=f"shared MobileNetV2 weights or Market-1501 query absent under {SHARED}",
)
def test_mobilenet_v2_pretrained_is_sane():
    model = build_model("mobilenet_v2", pretrained=str(MBV2_FILE)).eval()
    file_sd = torch.load(MBV2_FILE, map_location="cpu", weights_only=True)
    report = load_pretrained(mobilenet_v2(), MBV2_FILE, strict=True)
    assert report.ok and len(report.loaded) == 312 and report.missing == []
    # BN running statistics were loaded (not the defaults 0 / 1)
    rv = model.backbone.features[0][1].running_var
    assert torch.equal(rv, file_sd["features.0.1.running_var"]) and not torch.allclose(
        rv, torch.ones_like(rv)
    )
    assert model.backbone.features[18][1].running_mean.abs().sum() > 0

    x, y = _market_images()
    random_model = build_model("mobilenet_v2").eval()
    with torch.no_grad():
        f = F.normalize(model(x), dim=1)
        f_rand = F.normalize(random_model(x), dim=1)
    assert torch.isfinite(f).all()
    assert (f - f_rand).abs().max() > 0.01  # differs from random init
    sim = f @ f.T
    same = (y[:, None] == y[None, :]) & ~torch.eye(len(y), dtype=torch.bool)
    diff = y[:, None] != y[None, :]
    # ImageNet features already tell people apart a little: same person > different people.
    # Deterministic inference of fixed weights on fixed images (no training): the gap is a
    # property of the weights, the same on any CPU up to float rounding (~1e-6), far below 0.03
    assert sim[same].mean() > sim[diff].mean() + 0.03
