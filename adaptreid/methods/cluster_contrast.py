"""Cluster contrast (Dai et al., "Cluster Contrast for Unsupervised Person Re-Identification",
ACCV 2022), the memory-bank baseline of today's unsupervised re-ID, on the shared loop.

One step (an "epoch" of the paper: re-clustering before each)::

    features of every target training image (current model), L2-normalised
    -> k-reciprocal Jaccard distance -> DBSCAN; outliers dropped          pseudo.*
    -> cluster memory M: row c = the normalised mean feature of cluster c
    -> train: ClusterNCE  L = -log exp(f.m_y / tau) / sum_c exp(f.m_c / tau)
       (f the L2-normalised embedding, tau = method.temperature)
       after every optimiser step, for each image of the batch:
       m_y <- normalise(mu m_y + (1 - mu) f)                             method.momentum

Under DDP every rank gathers the batch features and labels of all ranks (rank order) and
applies the same updates, so the memory stays identical on every rank. The memory is part of
the criterion's state (``state_dict``), so it is checkpointed after every epoch and a resumed
run continues with the memory it had. The memory losses live in :mod:`adaptreid.losses.memory`
(MSPLR's ``method.memory`` uses them too), their initial entries come from
:func:`adaptreid.pseudo.centroids.initial_memory`.

With ``method.memory: camera_proxy`` the memory holds one entry per (cluster, camera) pair, a
camera-aware proxy, and the loss is CAP's (Wang et al., "Camera-aware Proxies for
Unsupervised Person Re-Identification", AAAI 2021; :mod:`adaptreid.losses.camera_proxy`)::

    -> proxies: each cluster split by camera; B[j] = normalised mean feature of proxy j
    -> train: L = L_intra + lambda L_inter                 method.inter_weight, hard_negatives
       after every optimiser step: B[j_i] <- normalise(mu B[j_i] + (1 - mu) f_i)

CAP also samples batches proxy-balanced; here batches stay P clusters x K images.

Differences from the authors' code, by design of the shared loop: the Adam optimiser is
rebuilt at every step (theirs runs one Adam over all epochs), and the step learning rate is
``optim.lr`` times eq. 6-style steps at ``optim.milestones`` counted in steps (their x0.1
every 20 epochs), constant within a step. Their defaults are in the presets: k1 = 30,
k2 = 6, eps = 0.6 (0.7 on DukeMTMC-reID), tau = 0.05, mu = 0.1, 16 identities x 16 images.
"""

from __future__ import annotations

from ..data.datasets import pseudo_samples
from ..engine.builders import optimizer_from_cfg
from ..engine.method import AdaptationMethod, Stage, TrainHooks, register_method
from ..engine.optim import multistep_factor
from ..losses.memory import (
    CameraProxyMemoryLoss,
    ClusterMemoryLoss,
    build_memory_loss,
    check_memory_options,
)
from ..method_options import ClusterContrastOptions
from ..pseudo.centroids import initial_memory

#: the memory losses are re-exported under their former home (tests, scripts)
__all__ = ["CameraProxyMemoryLoss", "ClusterContrast", "ClusterMemoryLoss"]


@register_method
class ClusterContrast(AdaptationMethod):
    name = "cluster_contrast"
    Options = ClusterContrastOptions
    normalize_features = True
    ignored = {
        "train.freeze_epochs": "no epoch freezes the body",
        "loss.": "its loss is ClusterNCE (method.temperature)",
        "optim.warmup_epochs": "the learning rate is constant within a step (optim.milestones "
        "count steps)",
        "optim.warmup_factor": "no warm-up",
    }

    @classmethod
    def validate(cls, cfg) -> None:
        check_memory_options(cfg.method)

    def pseudo_labels(self, feats):
        """DBSCAN (``pseudo.*``, the Jaccard distance in the presets) and the memory's
        initial rows: the normalised means of these features per cluster, or per
        camera-aware proxy (``method.memory: camera_proxy``)."""
        result = feats.cluster()
        camids = feats.camids if self.opt.memory == "camera_proxy" else None
        return result, initial_memory(feats.features, result.labels, camids)

    def on_labels(self, model, labels, extra):
        model.reset_classifier(0)  # the memory is the classifier
        return model

    def build_stage(self, stage, model, labels, extra):
        cfg, ctx = self.cfg, self.ctx
        criterion = build_memory_loss(extra, self.opt).to(ctx.device)
        lr = cfg.optim.lr * multistep_factor(ctx.step, cfg.optim.milestones, cfg.optim.gamma)
        optimizer, _ = optimizer_from_cfg(cfg, model, lr=lr, schedule=False)
        loader = ctx.train_loader(pseudo_samples(ctx.target.train, labels))
        return Stage(
            criterion,
            optimizer,
            loader,
            epochs=cfg.adapt.epochs_per_step,
            hooks=TrainHooks(after_step=criterion.update),
        )
