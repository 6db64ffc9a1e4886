"""MSPLR: multi-step pseudo-label refinement (section 3.6.2).

One step of progressive learning (section 3.2, Figure 1), on the shared loop
(:mod:`adaptreid.engine.loop`, which extracts the features and evaluates)::

    features of every target training image (current model)
    -> camera-guided normalisation, eq. 4                  pseudo.camera_norm (+ pseudo.l2_after)
    -> DBSCAN (eps, min_samples 4) | k-means (k = N // 15, eq. 1)      pseudo.method
    -> cluster selection: >= K images, >= 2 cameras (section 3.4)       pseudo.select
    -> new classifier; body frozen 20 epochs, then the source recipe:
       L = L_tri + L_ID + 0.005 L_c (eq. 5), warm-up schedule (eq. 6)  section 3.6.2

``method.freeze`` says where the frozen epochs sit. ``before_schedule`` (the paper's reading,
section 3.6.2: "freezing the body of our model for 20 epochs [...]. Then, we unfreeze our
model and complete the fine-tuning following the procedure described in 3.6.1"): a stage of
``train.freeze_epochs`` head-only epochs at the constant base learning rate, then a stage of
``adapt.epochs_per_step`` epochs with the whole eq. 6 schedule, warm-up included.
``inside_schedule``: one stage of ``adapt.epochs_per_step`` epochs whose first
``train.freeze_epochs`` are frozen (the warm-up is then spent with the body frozen).

Every row of Tables 3 and 4 is a switch: the source model's backbone (resnet50 /
resnet50_ibn_a), ``adapt.max_steps`` (1 = "+DA", more = "+PL"), ``pseudo.select``,
``pseudo.camera_norm``, ``pseudo.method`` (dbscan / kmeans). ``loss.rtl_weight > 0`` mixes in
PAST's ranking triplet loss (eq. 4) with its RTL batches.

``method.memory`` (issue 26; none: the paper's MSPLR) adds a memory contrastive term on the
same pseudo-labels and batches, in both stages (:mod:`adaptreid.losses.memory`)::

    -> memory: camera_proxy: one entry per (cluster, camera) pair of the kept images (CAP,
       Wang et al., AAAI 2021), cluster: one per cluster; entry = normalised mean of the
       step's L2-normalised features (not the eq. 4 rows: training compares bn_feat)
    -> L = L_tri + L_ID + 0.005 L_c + w L_memory          method.memory_weight, temperature,
       L_memory: CAP's L_intra + lambda L_inter (camera_proxy) | ClusterNCE (cluster)
       on the L2-normalised BNNeck feature f             inter_weight, hard_negatives
       after every optimiser step, for each image: m <- normalise(mu m + (1 - mu) f)  momentum

Each stage starts from the step's initial memory (the frozen stage changes only the head,
so the backbone's features are still the step's; rebuilding it keeps a resume at the stage
boundary identical to an uninterrupted run), and within a stage the memory is part of the
criterion's state, so a resumed run continues with the memory it had. Not with
``loss.rtl_weight > 0``: RTL's positives and negatives carry no pseudo-label to update a memory
entry with.
"""

from __future__ import annotations

import numpy as np

from ..config import non_default
from ..data.datasets import pseudo_samples
from ..engine.builders import optimizer_from_cfg
from ..engine.method import AdaptationMethod, Stage, TrainHooks, register_method
from ..errors import ConfigError
from ..losses.memory import MEMORIES, MemoryAugmented, build_memory_loss, check_memory_options
from ..losses.past_loss import RankingTripletAugmented
from ..losses.reid_loss import build_reid_loss
from ..method_options import MSPLROptions
from ..pseudo.centroids import initial_memory
from .past_rtl import step_loader

FROZEN, FINETUNE = "frozen", "finetune"


@register_method
class MSPLR(AdaptationMethod):
    name = "msplr"
    Options = MSPLROptions

    @classmethod
    def validate(cls, cfg) -> None:
        opt = cfg.method
        if opt.freeze not in ("before_schedule", "inside_schedule"):
            raise ConfigError(
                f"method.freeze must be 'before_schedule' or 'inside_schedule', got {opt.freeze!r}"
            )
        if opt.memory not in ("none", *MEMORIES):
            raise ConfigError(
                f"method.memory must be one of {('none', *MEMORIES)}, got {opt.memory!r}"
            )
        unread = cls.unread_keys(cfg)
        if unread:
            raise ConfigError(
                "MSPLR does not read these settings here:\n  "
                + "\n  ".join(f"{k}: {why}" for k, why in unread.items())
            )
        if opt.memory == "none":
            return
        check_memory_options(opt)
        if not opt.memory_weight >= 0:
            raise ConfigError(f"method.memory_weight must be >= 0, got {opt.memory_weight}")
        if cfg.loss.rtl_weight > 0:
            raise ConfigError(
                f"method.memory={opt.memory!r} with loss.rtl_weight > 0: not supported (RTL's "
                "positives and negatives carry no pseudo-label to update the memory with); "
                "set one of them off"
            )

    @classmethod
    def unread_keys(cls, cfg) -> dict[str, str]:
        """The memory's settings when not at their default: all of them without a memory
        (``method.memory: none``), CAP's ``inter_weight`` / ``hard_negatives`` with a cluster
        memory."""
        why = {}
        if cfg.method.memory == "none":
            off = "no memory term: method.memory is 'none'"
            keys = ("memory_weight", "temperature", "momentum", "inter_weight", "hard_negatives")
            why.update({f"method.{k}": off for k in keys})
        elif cfg.method.memory == "cluster":
            cap = "only method.memory: camera_proxy reads it (CAP's inter-camera loss)"
            why.update({f"method.{k}": cap for k in ("inter_weight", "hard_negatives")})
        return {k: why[k] for k in non_default(cfg, tuple(why))}

    @property
    def stages(self) -> tuple[str, ...]:
        frozen = self.opt.freeze == "before_schedule" and self.cfg.train.freeze_epochs > 0
        return (FROZEN, FINETUNE) if frozen else (FINETUNE,)

    def uses_jaccard(self) -> bool:
        return super().uses_jaccard() or self.cfg.loss.rtl_weight > 0

    def ranking_width(self) -> int:
        return 2 * self.opt.rtl_eta if self.cfg.loss.rtl_weight > 0 else 0

    def pseudo_labels(self, feats):
        """Eq. 4, DBSCAN / k-means, cluster selection (:meth:`StepFeatures.cluster`); with RTL
        mixed in, also the ranking score table of PAST eq. 2 from the same Jaccard distance;
        with a memory, its initial entries (per cluster or per (cluster, camera) pair of the
        kept images: the normalised mean of their L2-normalised features)."""
        result = feats.cluster()
        extra = {}
        if self.cfg.loss.rtl_weight > 0:
            table = feats.ranked(2 * self.opt.rtl_eta)
            extra["ranked"] = table.astype(np.int32)
        if self.opt.memory != "none":  # the memory's initial entries, from unit features
            camids = feats.camids if self.opt.memory == "camera_proxy" else None
            extra.update(initial_memory(feats.features, result.labels, camids, normalize=True))
        return result, extra

    def on_labels(self, model, labels, extra):
        model.reset_classifier(self.num_classes(labels))  # a new classifier per step
        return model

    def build_stage(self, stage, model, labels, extra):
        cfg, ctx = self.cfg, self.ctx
        n_cls = self.num_classes(labels)
        criterion = build_reid_loss(cfg.loss, n_cls, model.feat_dim).to(ctx.device)
        center_opt = criterion.center_optimizer(cfg.loss.center_lr)
        samples = pseudo_samples(ctx.target.train, labels)
        if cfg.loss.rtl_weight > 0:  # + w L_RTL, with RTL triplets in the batches
            loader = step_loader(ctx, labels, ranked=extra["ranked"], eta=self.opt.rtl_eta)
            criterion = RankingTripletAugmented(
                criterion, weight=cfg.loss.rtl_weight, eta=self.opt.rtl_eta, margin=cfg.loss.margin
            )
        else:
            loader = ctx.train_loader(samples)
        hooks = TrainHooks()
        if self.opt.memory != "none":  # + w L_memory, the memory updated after every step
            memory = build_memory_loss(extra, self.opt)
            criterion = MemoryAugmented(criterion, memory, weight=self.opt.memory_weight)
            criterion = criterion.to(ctx.device)
            hooks = TrainHooks(after_step=criterion.update)
        if stage == FROZEN:  # head only, constant base lr: "let the last FC layer learn p"
            optimizer, _ = optimizer_from_cfg(cfg, model, schedule=False)
            return Stage(
                criterion,
                optimizer,
                loader,
                epochs=cfg.train.freeze_epochs,
                extra_optimizers=[center_opt] if center_opt else [],
                freeze_epochs=cfg.train.freeze_epochs,
                hooks=hooks,
            )
        optimizer, scheduler = optimizer_from_cfg(cfg, model)
        inside = self.opt.freeze == "inside_schedule"
        return Stage(
            criterion,
            optimizer,
            loader,
            epochs=cfg.adapt.epochs_per_step,
            scheduler=scheduler,
            extra_optimizers=[center_opt] if center_opt else [],
            freeze_epochs=cfg.train.freeze_epochs if inside else 0,
            hooks=hooks,
        )
