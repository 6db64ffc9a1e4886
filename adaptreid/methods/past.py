"""PAST (Zhang et al., ICCV 2019): self-training with progressive augmentation (Algorithm 1).

One iteration (``adapt.max_steps`` = I_max = 4, section 3.1), on the shared loop
(:mod:`adaptreid.engine.loop`: line 3's extraction, the evaluation, resume)::

    Conservative stage
      3  features F of every target training image (per-part L2-normalised, PCB)
      4  k-reciprocal Jaccard distance (eq. 1) -> ranking score matrix D_R (eq. 2)
      5  HDBSCAN(D_R; S_min) -> pseudo-labels; outliers dropped -> T_U
      6  train on T_U with L_C = L_RTL + lambda L_CTL (eq. 3-5; per part on normalised
         features with the cosine distance, as the released code: method.triplet_reading)
      7  features F_U of T_U
    Promoting stage
      9  new classifier, W_c = mean feature of cluster c (eq. 7), one per part (section 3.1)
      10 train on T_U with softmax cross-entropy (eq. 6)

Model (section 3.1): PCB on a ResNet-50 trunk with last stride 1, 9 regions (EANet's layout
in the paper presets), a 256-d embedding per region; evaluation on the per-part normalised
features with the cosine distance. The run starts from a source-trained checkpoint: if it has
another head (e.g. a BNNeck model from ``adaptreid train``), its trunk is kept and the
configured head is new. Step 0 evaluates the source model as trained, iteration 1 clusters
its features (Algorithm 1's M), and the head is swapped right after.

Optimisation (section 3.1): SGD (``optim.name/momentum/weight_decay``), batch 64 (P x K),
one optimiser per stage, rebuilt every iteration: conservative 1e-4 on the trunk and 2e-4 on
the embedding layers; promoting 1e-3 on the new classifier and 5e-5 on the rest; "after 3
iterations, all learning rates are multiplied by 0.1". Constant within a stage.

Design decisions the paper leaves open, each an option: the feature and distance of CTL / RTL
(``triplet_reading``: per part, L2-normalised, cosine, as the authors' released code; or the
concatenated embedding with the euclidean distance); the epochs of each stage (40 in the
authors' released script); the RTL batch layout (:mod:`adaptreid.methods.past_rtl`); D_R beyond
the stored Jaccard entries (euclidean order, :mod:`adaptreid.pseudo.ranking`); eq. 7 on the
normalised features (``classifier_init``). S_min's reading: ``pseudo.s_min_reading``.

Where each part of PAST lives (this file is the algorithm box):

* options (``method.*``): :class:`adaptreid.method_options.PASTOptions`;
* eq. 1, k-reciprocal Jaccard distance: :mod:`adaptreid.pseudo.kreciprocal` (top-k:
  :mod:`adaptreid.pseudo.topk`), computed once per step by
  :class:`adaptreid.engine.pseudo_step.StepFeatures`;
* eq. 2, the ranking score matrix D_R as a neighbour table: :mod:`adaptreid.pseudo.ranking`;
* HDBSCAN with S_min (section 3.4; ``pseudo.s_min_reading``): :mod:`adaptreid.pseudo.hdbscan`,
  settings from :class:`adaptreid.pseudo.settings.PseudoSettings`;
* eq. 3-5, CTL + lambda RTL: :mod:`adaptreid.losses.past_loss` (on
  :mod:`adaptreid.losses.triplet` and :mod:`adaptreid.losses.ranking_triplet`);
* the RTL batches (anchors, positives from ranks 1..eta, negatives from eta+1..2 eta):
  :mod:`adaptreid.methods.past_rtl`;
* eq. 6-7, the promoting stage's classifier from cluster means:
  :func:`adaptreid.pseudo.centroids.cluster_means` and :func:`promoting_loss`;
* the PCB model (section 3.1): :mod:`adaptreid.models.pcb`; the source presets
  ``configs/source/*_pcb*.yaml``; the adaptation presets ``configs/past/``.

Table 1's rows are ``method.use_ctl`` / ``use_rtl`` / ``use_promoting``; Table 2's are
``pseudo.method: hdbscan | dbscan | kmeans``. Mixing: ``pseudo.camera_norm: true`` puts MSPLR's
eq. 4 before the Jaccard distance, ``pseudo.select: true`` MSPLR's cluster selection.
"""

from __future__ import annotations

import logging

import numpy as np

from ..config import non_default
from ..engine.method import AdaptationMethod, Stage, register_method
from ..engine.optim import OptimizerSettings, build_optimizer, multistep_factor
from ..errors import ConfigError
from ..losses.past_loss import TRIPLET_READINGS, ConservativeLoss, promoting_loss
from ..method_options import PASTOptions
from ..models import BACKBONES, HEADS, HeadSettings, ReidModel, build_model
from ..pseudo.centroids import cluster_means
from .past_rtl import step_loader

log = logging.getLogger("adaptreid")

CONSERVATIVE, PROMOTING = "conservative", "promoting"
_CLASSIFIER_INITS = ("normalized", "raw", "random")


_OWN_LR = "its learning rates are method.lr_* (section 3.1), constant within a stage"


@register_method
class PAST(AdaptationMethod):
    name = "past"
    Options = PASTOptions
    normalize_features = True  # section 3.1: parts normalised separately, then concatenated
    reads_model = (
        "model.backbone",
        "model.head",
        "model.head_options",
        "model.embedding_dim",
        "model.pooling",
    )
    ignored = {
        "optim.lr": _OWN_LR,
        "optim.warmup_epochs": _OWN_LR,
        "optim.warmup_factor": _OWN_LR,
        "optim.milestones": _OWN_LR,
        "optim.gamma": _OWN_LR,
        "optim.head_lr_mult": _OWN_LR,
        "train.freeze_epochs": "no stage freezes the trunk",
        "adapt.epochs_per_step": "its stage lengths are method.conservative_epochs / "
        "method.promoting_epochs",
        "loss.triplet_weight": "its losses are eq. 3-6 (method.use_ctl / use_rtl / lambda_ctl)",
        "loss.ce_weight": "the promoting stage's loss is plain softmax cross-entropy (eq. 6)",
        "loss.label_smoothing": "eq. 6 is plain softmax cross-entropy",
        "loss.center_weight": "PAST has no centre loss",
        "loss.center_lr": "PAST has no centre loss",
        "loss.rtl_weight": "RTL is part of PAST's loss (method.use_rtl); rtl_weight mixes it "
        "into MSPLR",
    }

    @classmethod
    def unread_keys(cls, cfg) -> dict[str, str]:
        """Settings PAST does not read under ``cfg``, when not at their default: CTL / RTL's
        soft margin (they use the margin ``loss.margin``), DBSCAN's unless ``pseudo.method``
        is dbscan, k-means' unless it is kmeans, and cluster selection's unless
        ``pseudo.select`` (MSPLR's selection mixed in)."""
        m = cfg.pseudo.method
        why = {"loss.soft_margin": "CTL and RTL use the margin m = loss.margin (eq. 3-4)"}
        if m != "dbscan":
            dbscan = f"only DBSCAN reads it, and pseudo.method is {m!r}"
            if m == "hdbscan":
                dbscan += "; HDBSCAN's size is pseudo.s_min / s_min_reading"
            why.update(
                dict.fromkeys(("pseudo.eps", "pseudo.min_samples", "pseudo.auto_eps"), dbscan)
            )
        if m != "kmeans":
            why["pseudo.kmeans_k"] = f"only k-means reads it, and pseudo.method is {m!r}"
        if not cfg.pseudo.select:
            off = "cluster selection is off: pseudo.select is false (true mixes in MSPLR's)"
            keys = ("min_size", "min_cameras", "enforce_size", "enforce_cameras")
            why.update({f"pseudo.{k}": off for k in keys})
        return {k: why[k] for k in non_default(cfg, tuple(why))}

    @classmethod
    def validate(cls, cfg) -> None:
        unread = cls.unread_keys(cfg)
        if unread:
            raise ConfigError(
                "PAST does not read these settings here:\n  "
                + "\n  ".join(f"{k}: {why}" for k, why in unread.items())
            )
        _check_head(cfg)
        p = cfg.method
        if not (p.use_ctl or p.use_rtl):
            raise ConfigError(
                "method.use_ctl and method.use_rtl are both off: no conservative loss"
            )
        if p.eta < 1:
            raise ConfigError(f"method.eta must be >= 1, got {p.eta}")
        if p.triplet_reading not in TRIPLET_READINGS:
            raise ConfigError(
                f"method.triplet_reading must be one of {TRIPLET_READINGS}, "
                f"got {p.triplet_reading!r}"
            )
        if p.classifier_init not in _CLASSIFIER_INITS:
            raise ConfigError(
                f"method.classifier_init must be one of {_CLASSIFIER_INITS}, "
                f"got {p.classifier_init!r}"
            )
        if p.conservative_epochs < 0 or p.promoting_epochs < 0:
            raise ConfigError("method.conservative_epochs / promoting_epochs must be >= 0")

    @property
    def stages(self) -> tuple[str, ...]:
        return (CONSERVATIVE, PROMOTING) if self.opt.use_promoting else (CONSERVATIVE,)

    def uses_jaccard(self) -> bool:
        return super().uses_jaccard() or self.opt.use_rtl  # D_R comes from it

    def ranking_width(self) -> int:
        return 2 * self.opt.eta if self.opt.use_rtl else 0

    # ------------------------------------------------------------------ Algorithm 1
    def pseudo_labels(self, feats):
        """Lines 3-5: HDBSCAN (``pseudo.*``) on the Jaccard distance (eq. 1; D_R of eq. 2 only
        re-orders its rows, so the clusters are the same), and the D_R neighbour table of the
        same distance for RTL."""
        result = feats.cluster()
        extra = {}
        if self.opt.use_rtl:
            ranked = feats.ranked(2 * self.opt.eta)
            extra["ranked"] = ranked.astype(np.int32)
            if result.quality is not None:  # analysis only
                result.quality.update(_ranking_quality(ranked, self.opt.eta, feats.true_pids))
        return result, extra

    def on_labels(self, model, labels, extra):
        model = past_model(self.cfg, model).to(self.ctx.device)  # PCB head (iteration 1)
        model.reset_classifier(0)  # the conservative stage has no classifier
        return model

    def begin_stage(self, stage, model, labels, extra):
        if stage != PROMOTING:
            return model
        weight = None  # lines 7 and 9: F_U, then the classifier of eq. 7
        if self.opt.classifier_init != "random":
            f_u = self.ctx.extract(
                model,
                normalize=self.opt.classifier_init == "normalized",
                desc=f"step {self.ctx.step} F_U",
            )
            weight = cluster_means(f_u.feats, labels[f_u.kept])  # rows: readable images
        model.reset_classifier(self.num_classes(labels), weight)
        return model

    def build_stage(self, stage, model, labels, extra):
        p, cfg, step = self.opt, self.cfg, self.ctx.step
        if stage == CONSERVATIVE:  # line 6
            criterion = ConservativeLoss(
                eta=p.eta,
                margin=cfg.loss.margin,
                lam=p.lambda_ctl,
                use_ctl=p.use_ctl,
                use_rtl=p.use_rtl,
                reading=p.triplet_reading,
                num_parts=getattr(model.head, "num_parts", 1),
            )
            loader = step_loader(self.ctx, labels, ranked=extra.get("ranked"), eta=p.eta)
            return Stage(
                criterion, conservative_optimizer(cfg, model, step), loader, p.conservative_epochs
            )
        criterion = promoting_loss(self.num_classes(labels), model.feat_dim)  # line 10
        loader = step_loader(self.ctx, labels)
        return Stage(criterion, promoting_optimizer(cfg, model, step), loader, p.promoting_epochs)


def _check_head(cfg) -> None:
    """The configured trunk and head (``model.*``, built at iteration 1) exist and take
    ``model.head_options``: checked on a tiny head before the run starts, not after step 0."""
    m = cfg.model
    BACKBONES.get(m.backbone)  # an unknown name: ConfigError with the closest one
    head = HEADS.get(m.head)
    try:
        head(8, embedding_dim=m.embedding_dim, pooling=m.pooling, **dict(m.head_options))
    except TypeError as e:
        raise ConfigError(f"model.head {m.head!r}: bad model.head_options: {e}") from None


def _ranking_quality(ranked: np.ndarray, eta: int, true_pids: np.ndarray | None) -> dict:
    """With ground truth (analysis only): the fraction of RTL positives (ranks 1..eta) that
    share the anchor's identity and of negatives (eta+1..2 eta) that do not."""
    if true_pids is None:
        return {}
    same = true_pids[ranked] == true_pids[:, None]
    return {
        "rtl_pos_precision": float(same[:, :eta].mean()),
        "rtl_neg_precision": float(1.0 - same[:, eta : 2 * eta].mean()),
    }


# --------------------------------------------------------------------------------------------
# model and optimisers
# --------------------------------------------------------------------------------------------


def past_model(cfg, model: ReidModel) -> ReidModel:
    """The network PAST trains: ``model`` itself when it already has the configured head,
    else the configured head (e.g. PCB) on ``model``'s trained trunk (its ``backbone.*``
    weights; the backbones must be the same network)."""
    m = cfg.model
    want = {
        "head": str(m.head).lower(),
        "head_options": dict(m.head_options),
        "embedding_dim": int(m.embedding_dim),
        "pooling": str(m.pooling).lower(),
    }
    if all(model.arch.get(k) == v for k, v in want.items()):
        return model
    have = model.arch.get("backbone")
    name = getattr(BACKBONES.get(m.backbone), "__name__", m.backbone)
    if have != name:
        raise ConfigError(
            f"adapt.init_checkpoint has a {have!r} trunk but model.backbone is {m.backbone!r}: "
            "PAST keeps the source trunk and needs the same backbone"
        )
    new = build_model(
        m.backbone,
        num_classes=0,
        last_stride=int(model.arch.get("last_stride", 1)),
        pretrained=None,
        backbone_options=model.arch.get("backbone_options") or {},
        head=HeadSettings(
            name=m.head,
            pooling=m.pooling,
            embedding_dim=m.embedding_dim,
            neck_feat=model.arch.get("neck_feat", "after"),
            options=m.head_options,
        ),
    )
    new.backbone.load_state_dict(model.backbone.state_dict())
    log.info(
        "PAST model: new %s head (%s) on the source %s trunk",
        m.head,
        ", ".join(f"{k}={v}" for k, v in m.head_options.items()) or "defaults",
        have,
    )
    return new


def _lr_factor(opt: PASTOptions, iteration: int) -> float:
    if opt.lr_decay_after <= 0:
        return 1.0
    return multistep_factor(iteration, [opt.lr_decay_after], opt.lr_decay)


def _optimizer(cfg, groups: list[dict]):
    o = cfg.optim
    return build_optimizer(
        groups, OptimizerSettings.from_config(o, lr=max(g["lr"] for g in groups))
    )


def conservative_optimizer(cfg, model: ReidModel, iteration: int):
    """Section 3.1: the trunk at 1e-4, the embedding layers (the head) at 2e-4 (x 0.1 after
    iteration 3)."""
    p = cfg.method
    f = _lr_factor(p, iteration)
    return _optimizer(
        cfg,
        [
            {
                "params": list(model.body_parameters()),
                "lr": p.lr_trunk_conservative * f,
                "name": "trunk",
            },
            {
                "params": list(model.head_parameters()),
                "lr": p.lr_embedding_conservative * f,
                "name": "embedding",
            },
        ],
    )


def promoting_optimizer(cfg, model: ReidModel, iteration: int):
    """Section 3.1: the new classifier at 1e-3, every other layer at 5e-5 (x 0.1 after
    iteration 3)."""
    p = cfg.method
    f = _lr_factor(p, iteration)
    classifier = list(model.head.classifier.parameters())
    ids = {id(q) for q in classifier}
    rest = [q for q in model.parameters() if id(q) not in ids]
    return _optimizer(
        cfg,
        [
            {"params": classifier, "lr": p.lr_classifier_promoting * f, "name": "classifier"},
            {"params": rest, "lr": p.lr_rest_promoting * f, "name": "rest"},
        ],
    )
