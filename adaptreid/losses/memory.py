"""Contrastive losses against a momentum-updated memory, shared by the methods that train with
one (cluster contrast; MSPLR with ``method.memory``).

* :class:`ClusterMemoryLoss`: cluster contrast's ClusterNCE (Dai et al., ACCV 2022) against a
  memory with one entry per cluster, ``L = -log exp(f.m_y / tau) / sum_c exp(f.m_c / tau)``;
* :class:`CameraProxyMemoryLoss`: CAP's intra- and inter-camera losses (Wang et al.,
  "Camera-aware Proxies for Unsupervised Person Re-Identification", AAAI 2021;
  :mod:`adaptreid.losses.camera_proxy`) against a memory with one entry per (cluster, camera)
  pair, ``L = L_intra + lambda L_inter``;
* :class:`MemoryAugmented`: any criterion plus ``w L_memory`` (MSPLR eq. 5 + a memory term);
* :func:`build_memory_loss`: one of the first two from a method's options and the initial
  entries :func:`adaptreid.pseudo.centroids.initial_memory` made from the step's features;
  :func:`check_memory_options`: those options' values, checked before a run.

``f`` is the L2-normalised BNNeck feature of the training batch (``outputs["bn_feat"]``). The
memory is a buffer, so it is part of the criterion's ``state_dict`` (checkpointed after every
epoch: a resumed run continues with the memory it had) and is not learnt by the optimiser;
each loss's ``update(outputs, batch)`` is the trainer's after-step hook
(:class:`~adaptreid.engine.trainer.TrainHooks`): for every image of the batch, in batch order,
its entry ``m <- normalise(mu m + (1 - mu) f)``. Under DDP every rank gathers the batch
features and labels of all ranks (rank order) first and applies the same updates, so the
memory stays identical on every rank.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..runtime import distributed as D
from .camera_proxy import camera_proxy_losses

__all__ = [
    "MEMORIES",
    "CameraProxyMemoryLoss",
    "ClusterMemoryLoss",
    "MemoryAugmented",
    "build_memory_loss",
    "check_memory_options",
]

#: the memories :func:`build_memory_loss` builds (``method.memory``)
MEMORIES = ("cluster", "camera_proxy")


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


MemoryLoss = ClusterMemoryLoss | CameraProxyMemoryLoss


class MemoryAugmented(nn.Module):
    """``base + weight * L_memory``: any criterion (e.g. MSPLR's eq. 5,
    :class:`~adaptreid.losses.reid_loss.ReidLoss`) plus a memory loss on the same batch.

    The parts logged are the base's, ``memory`` (``L_memory``, unweighted) and the memory
    loss's own parts prefixed ``memory_`` (``memory_intra``, ``memory_inter``,
    ``memory_acc``; ``memory_nce`` for a cluster memory). ``base`` and ``memory`` stay
    reachable; the state_dict holds both (``base.*``, ``memory.*``). :meth:`update` is the
    memory's after-step hook."""

    def __init__(self, base: nn.Module, memory: MemoryLoss, *, weight: float) -> None:
        super().__init__()
        self.base = base
        self.memory = memory
        self.weight = float(weight)

    def forward(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        total, parts = self.base(outputs, batch)
        mem, mem_parts = self.memory(outputs, batch)
        parts = {
            **parts,
            "memory": float(mem.detach()),
            **{f"memory_{k}": v for k, v in mem_parts.items()},
        }
        return total + self.weight * mem, parts

    def update(self, outputs: dict, batch: dict) -> None:
        """The memory's momentum update (:meth:`ClusterMemoryLoss.update` /
        :meth:`CameraProxyMemoryLoss.update`)."""
        self.memory.update(outputs, batch)


def build_memory_loss(extra: dict, opt) -> MemoryLoss:
    """The memory loss ``opt.memory`` names (``"cluster"`` or ``"camera_proxy"``), its
    entries from ``extra`` (:func:`adaptreid.pseudo.centroids.initial_memory`'s arrays:
    ``memory``, and ``proxy_cluster`` / ``proxy_camera`` for camera-aware proxies).

    ``opt``: a method's options with ``memory``, ``temperature``, ``momentum``,
    ``inter_weight`` and ``hard_negatives`` (cluster contrast's, MSPLR's). On the CPU; move
    it to the device with ``.to``."""
    memory = torch.from_numpy(np.asarray(extra["memory"]))
    if opt.memory == "camera_proxy":
        return CameraProxyMemoryLoss(
            memory,
            torch.as_tensor(np.asarray(extra["proxy_cluster"])),
            torch.as_tensor(np.asarray(extra["proxy_camera"])),
            temperature=opt.temperature,
            momentum=opt.momentum,
            inter_weight=opt.inter_weight,
            hard_negatives=opt.hard_negatives,
        )
    if opt.memory == "cluster":
        return ClusterMemoryLoss(memory, temperature=opt.temperature, momentum=opt.momentum)
    raise ValueError(f"no memory loss for method.memory={opt.memory!r}")


def check_memory_options(opt) -> None:
    """Raise :class:`~adaptreid.errors.ConfigError` for a memory option of ``opt`` (see
    :func:`build_memory_loss`) out of range: ``memory`` not in :data:`MEMORIES`, ``temperature
    <= 0``, ``momentum`` outside ``[0, 1)``, ``inter_weight < 0``, ``hard_negatives < 0``."""
    if opt.memory not in MEMORIES:
        raise ConfigError(f"method.memory must be one of {MEMORIES}, got {opt.memory!r}")
    if not opt.temperature > 0:
        raise ConfigError(f"method.temperature must be > 0, got {opt.temperature}")
    if not 0 <= opt.momentum < 1:
        raise ConfigError(f"method.momentum must be in [0, 1), got {opt.momentum}")
    if opt.inter_weight < 0:
        raise ConfigError(f"method.inter_weight must be >= 0, got {opt.inter_weight}")
    if opt.hard_negatives < 0:
        raise ConfigError(f"method.hard_negatives must be >= 0, got {opt.hard_negatives}")
