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
"""

from __future__ import annotations

import numpy as np

from ..data.datasets import pseudo_samples
from ..engine.builders import optimizer_from_cfg
from ..engine.method import AdaptationMethod, Stage, register_method
from ..errors import ConfigError
from ..losses.past_loss import RankingTripletAugmented
from ..losses.reid_loss import build_reid_loss
from ..method_options import MSPLROptions
from .past_rtl import step_loader

FROZEN, FINETUNE = "frozen", "finetune"


@register_method
class MSPLR(AdaptationMethod):
    name = "msplr"
    Options = MSPLROptions

    @classmethod
    def validate(cls, cfg) -> None:
        if cfg.method.freeze not in ("before_schedule", "inside_schedule"):
            raise ConfigError(
                f"method.freeze must be 'before_schedule' or 'inside_schedule', "
                f"got {cfg.method.freeze!r}"
            )

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
        mixed in, also the ranking score table of PAST eq. 2 from the same Jaccard distance."""
        result = feats.cluster()
        extra = {}
        if self.cfg.loss.rtl_weight > 0:
            table = feats.ranked(2 * self.opt.rtl_eta)
            extra["ranked"] = table.astype(np.int32)
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
        if stage == FROZEN:  # head only, constant base lr: "let the last FC layer learn p"
            optimizer, _ = optimizer_from_cfg(cfg, model, schedule=False)
            return Stage(
                criterion,
                optimizer,
                loader,
                epochs=cfg.train.freeze_epochs,
                extra_optimizers=[center_opt] if center_opt else [],
                freeze_epochs=cfg.train.freeze_epochs,
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
        )
