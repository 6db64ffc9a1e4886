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
run continues with the memory it had.

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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.datasets import pseudo_samples
from ..engine.builders import optimizer_from_cfg
from ..engine.method import AdaptationMethod, Stage, TrainHooks, register_method
from ..engine.optim import multistep_factor
from ..errors import ConfigError
from ..losses.camera_proxy import camera_proxy_losses
from ..method_options import ClusterContrastOptions
from ..pseudo.centroids import camera_proxies, cluster_means
from ..runtime import distributed as D


class ClusterMemoryLoss(nn.Module):
    """ClusterNCE against a cluster memory (a buffer, checkpointed with the criterion).

    ``criterion(outputs, batch)`` uses ``outputs["bn_feat"]`` and ``batch["pid"]`` (the
    pseudo-labels); :meth:`update` is the after-step hook (momentum update, synchronised
    across ranks)."""

    def __init__(self, memory: torch.Tensor, *, temperature: float, momentum: float) -> None:
        super().__init__()
        self.register_buffer("memory", F.normalize(memory.float(), dim=1))
        self.temperature = float(temperature)
        self.momentum = float(momentum)

    def forward(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        f = F.normalize(outputs["bn_feat"], dim=1)
        logits = f @ self.memory.T / self.temperature
        labels = batch["pid"].to(logits.device)
        loss = F.cross_entropy(logits, labels)
        acc = float((logits.argmax(1) == labels).float().mean())
        return loss, {"nce": float(loss.detach()), "acc": acc}

    @torch.no_grad()
    def update(self, outputs: dict, batch: dict) -> None:
        """``m_y <- normalise(mu m_y + (1 - mu) f)`` for every image of the batch, in batch
        order, with the batches of all ranks gathered first (rank order)."""
        f = F.normalize(outputs["bn_feat"].detach().float(), dim=1)
        y = batch["pid"].to(f.device)
        f, y = D.all_gather_cat(f), D.all_gather_cat(y)
        for feat, label in zip(f, y.tolist()):
            m = self.momentum * self.memory[label] + (1.0 - self.momentum) * feat
            self.memory[label] = m / m.norm().clamp_min(1e-12)


class CameraProxyMemoryLoss(nn.Module):
    """CAP's losses (:func:`~adaptreid.losses.camera_proxy.camera_proxy_losses`) against a
    memory of camera-aware proxies (buffers, checkpointed with the criterion).

    ``criterion(outputs, batch)`` uses ``outputs["bn_feat"]``, ``batch["pid"]`` (the cluster)
    and ``batch["camid"]``, whose pair names the image's proxy; :meth:`update` is the
    after-step hook (momentum update of each image's proxy, synchronised across ranks)."""

    def __init__(
        self,
        memory: torch.Tensor,
        proxy_cluster: torch.Tensor,
        proxy_camera: torch.Tensor,
        *,
        temperature: float,
        momentum: float,
        inter_weight: float,
        hard_negatives: int,
    ) -> None:
        super().__init__()
        self.register_buffer("memory", F.normalize(memory.float(), dim=1))
        self.register_buffer("proxy_cluster", proxy_cluster.long())
        self.register_buffer("proxy_camera", proxy_camera.long())
        cameras = torch.unique(self.proxy_camera)  # sorted
        table = torch.full((int(self.proxy_cluster.max()) + 1, len(cameras)), -1)
        cam_index = torch.searchsorted(cameras, self.proxy_camera)
        table[self.proxy_cluster, cam_index] = torch.arange(len(self.proxy_cluster))
        self.register_buffer("cameras", cameras)
        self.register_buffer("table", table)
        self.temperature, self.momentum = float(temperature), float(momentum)
        self.inter_weight, self.hard_negatives = float(inter_weight), int(hard_negatives)

    def proxy_of(self, labels: torch.Tensor, camids: torch.Tensor) -> torch.Tensor:
        """Each image's proxy from its cluster and camera (an unknown pair is an error)."""
        labels, camids = labels.long(), camids.long()
        col = torch.searchsorted(self.cameras, camids).clamp_max(len(self.cameras) - 1)
        ok = (self.cameras[col] == camids) & (labels >= 0) & (labels < len(self.table))
        proxy = torch.where(ok, self.table[labels.clamp(0, len(self.table) - 1), col], -1)
        if bool((proxy < 0).any()):
            i = int((proxy < 0).nonzero()[0])
            raise ValueError(
                f"no camera-aware proxy for cluster {int(labels[i])}, camera {int(camids[i])}"
            )
        return proxy

    def forward(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        f = F.normalize(outputs["bn_feat"], dim=1)
        logits = f @ self.memory.T / self.temperature
        proxy = self.proxy_of(batch["pid"].to(f.device), batch["camid"].to(f.device))
        l_intra, l_inter = camera_proxy_losses(
            logits,
            proxy,
            self.proxy_cluster,
            self.proxy_camera,
            hard_negatives=self.hard_negatives,
        )
        loss = l_intra + self.inter_weight * l_inter
        acc = float((logits.argmax(1) == proxy).float().mean())
        parts = {"intra": float(l_intra.detach()), "inter": float(l_inter.detach())}
        return loss, {**parts, "acc": acc}

    @torch.no_grad()
    def update(self, outputs: dict, batch: dict) -> None:
        """``B[j] <- normalise(mu B[j] + (1 - mu) f)`` for every image of the batch and its
        proxy ``j``, in batch order, the batches of all ranks gathered first (rank order)."""
        f = F.normalize(outputs["bn_feat"].detach().float(), dim=1)
        proxy = self.proxy_of(batch["pid"].to(f.device), batch["camid"].to(f.device))
        f, proxy = D.all_gather_cat(f), D.all_gather_cat(proxy)
        for feat, j in zip(f, proxy.tolist()):
            m = self.momentum * self.memory[j] + (1.0 - self.momentum) * feat
            self.memory[j] = m / m.norm().clamp_min(1e-12)


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
        if not cfg.method.temperature > 0:
            raise ConfigError(f"method.temperature must be > 0, got {cfg.method.temperature}")
        if not 0 <= cfg.method.momentum < 1:
            raise ConfigError(f"method.momentum must be in [0, 1), got {cfg.method.momentum}")
        if cfg.method.inter_weight < 0:
            raise ConfigError(f"method.inter_weight must be >= 0, got {cfg.method.inter_weight}")
        if cfg.method.hard_negatives < 0:
            raise ConfigError(
                f"method.hard_negatives must be >= 0, got {cfg.method.hard_negatives}"
            )

    def pseudo_labels(self, feats):
        """DBSCAN (``pseudo.*``, the Jaccard distance in the presets) and the memory's
        initial rows: the normalised means of these features per cluster, or per
        camera-aware proxy (``method.memory: camera_proxy``)."""
        result = feats.cluster()
        if self.opt.memory == "camera_proxy":
            proxy, proxy_cluster, proxy_camera = camera_proxies(result.labels, feats.camids)
            memory = F.normalize(cluster_means(feats.features, proxy), dim=1)
            extra = {"proxy_cluster": proxy_cluster, "proxy_camera": proxy_camera}
            return result, {"memory": memory.numpy().astype(np.float32), **extra}
        memory = F.normalize(cluster_means(feats.features, result.labels), dim=1)
        return result, {"memory": memory.numpy().astype(np.float32)}

    def on_labels(self, model, labels, extra):
        model.reset_classifier(0)  # the memory is the classifier
        return model

    def build_stage(self, stage, model, labels, extra):
        cfg, ctx = self.cfg, self.ctx
        memory = torch.from_numpy(np.asarray(extra["memory"]))
        if self.opt.memory == "camera_proxy":
            criterion = CameraProxyMemoryLoss(
                memory,
                torch.as_tensor(np.asarray(extra["proxy_cluster"])),
                torch.as_tensor(np.asarray(extra["proxy_camera"])),
                temperature=self.opt.temperature,
                momentum=self.opt.momentum,
                inter_weight=self.opt.inter_weight,
                hard_negatives=self.opt.hard_negatives,
            ).to(ctx.device)
        else:
            criterion = ClusterMemoryLoss(
                memory, temperature=self.opt.temperature, momentum=self.opt.momentum
            ).to(ctx.device)
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
