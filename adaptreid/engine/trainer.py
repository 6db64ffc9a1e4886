"""The training loop every method reuses: epochs of P x K batches.

The :class:`Trainer` knows nothing about re-ID losses or datasets: it is given a model, a
criterion ``(outputs, batch) -> (loss, {name: value})``, optimisers and a loader, and runs
epochs with optional autocast (bf16 / fp16), channels_last, a frozen body for the first
epochs (MSPLR section 3.6.2), DDP across ranks, a progress bar (loss, lr, images/s) and a
non-finite-loss guard. A hook (:class:`~adaptreid.engine.method.TrainHooks`) runs after each
optimiser step, e.g. to update a memory bank (whose state is the criterion's, so it is
checkpointed with it). Its :meth:`state_dict` holds everything needed to resume.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..errors import TrainingError
from ..runtime import distributed as D
from ..runtime import threads
from ..runtime.device import autocast
from ..runtime.faults import crash_point

log = logging.getLogger("adaptreid")

Criterion = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], tuple[torch.Tensor, dict]]


@dataclass
class TrainHooks:
    """Callbacks around the trainer's work (fast-reid's hooks), optional.

    * ``after_step(outputs, batch)``: after every optimiser step, with the batch's training
      outputs (detached by the hook if it keeps them), e.g. a memory-bank update. State the
      hook updates belongs to the criterion (an ``nn.Module`` buffer), which the trainer
      checkpoints.

    State that must agree across ranks under DDP (a memory bank) is the hook's to keep in
    sync, e.g. by gathering the batch features of every rank
    (``adaptreid.runtime.distributed``) before the update, so that every rank applies the
    same update.
    """

    after_step: Callable[[dict, dict], None] | None = None


@dataclass
class Stage:
    """What a :class:`Trainer` trains: one training stage, as a method builds it
    (:meth:`~adaptreid.engine.method.AdaptationMethod.build_stage`) or source training does.

    The loop runs ``epochs`` epochs of a :class:`Trainer` built from these parts,
    checkpointing after each; ``scheduler`` is stepped per epoch; the body is frozen while
    ``epoch <= freeze_epochs``; ``extra_optimizers`` are stepped after ``optimizer`` (e.g.
    the centre loss's own SGD)."""

    criterion: Criterion
    optimizer: torch.optim.Optimizer
    loader: Any
    epochs: int
    scheduler: Any = None
    extra_optimizers: Sequence[Any] = ()
    freeze_epochs: int = 0
    hooks: TrainHooks = field(default_factory=TrainHooks)


@dataclass(frozen=True)
class TrainSettings:
    """How a :class:`Trainer` runs (the same for every stage of a run)."""

    amp: str = "none"
    """none | bf16 | fp16 (fp16 uses a GradScaler; CUDA only)."""
    channels_last: bool = False
    iters_per_epoch: int = 0
    """Cap on batches per epoch (0: the loader's length)."""
    seed: int = 0
    """Seeds the loader's per-epoch generator (the loop: the step seed)."""
    desc: str = "train"
    verbose: bool = True


class Trainer:
    """Run training epochs.

    Args:
        model: a :class:`adaptreid.models.ReidModel` (train mode returns a dict of outputs).
        stage: the :class:`Stage` trained: ``criterion`` ``(outputs, batch) -> (total loss,
            {part: float})`` (an ``nn.Module``'s parameters, e.g. centre loss, are averaged
            across ranks), ``optimizer``, ``loader`` (dict batches with ``img`` and ``pid``),
            ``scheduler``, ``extra_optimizers``, ``freeze_epochs``, ``hooks``.
        settings: :class:`TrainSettings` (precision, batches per epoch, seed, progress bar);
            ``changes``: keyword changes of it.
        on_bad_images: called with the ``(index, path, reason)`` items a loader in skip mode
            dropped from a batch (``batch["bad"]``), if any.
    """

    def __init__(
        self,
        model: nn.Module,
        stage: Stage,
        settings: TrainSettings | None = None,
        *,
        device: torch.device,
        on_bad_images: Callable[[list], None] | None = None,
        **changes: Any,
    ) -> None:
        st = replace(settings or TrainSettings(), **changes)
        amp, channels_last = st.amp, st.channels_last
        self.model = model.to(device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.criterion = stage.criterion
        self.optimizer = stage.optimizer
        self.loader = stage.loader
        self.device = device
        self.scheduler = stage.scheduler
        self.extra_optimizers = list(stage.extra_optimizers or [])
        self.freeze_epochs = int(stage.freeze_epochs)
        self.amp = amp
        self.channels_last = channels_last
        self.iters_per_epoch = int(st.iters_per_epoch)
        self.seed = int(st.seed)
        self.desc = st.desc
        self.verbose = st.verbose and D.is_main()
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        self.hooks = stage.hooks
        self.on_bad_images = on_bad_images
        self._ddp: nn.Module | None = None
        self._ddp_frozen: bool | None = None
        self.epoch = 0  # last completed epoch

    # ------------------------------------------------------------------ DDP
    def _net(self) -> nn.Module:
        """The module to call: the model itself, or a DDP wrapper built for the current set
        of trainable parameters (rebuilt when the body is frozen or unfrozen)."""
        if not D.is_dist():
            return self.model
        frozen = bool(getattr(self.model, "body_frozen", False))
        if self._ddp is None or self._ddp_frozen != frozen:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
            self._ddp_frozen = frozen
        return self._ddp

    # ------------------------------------------------------------------ epochs
    def _set_epoch(self, epoch: int) -> None:
        sampler = getattr(self.loader, "batch_sampler", None)
        for s in (
            sampler,
            getattr(sampler, "sampler", None),
            getattr(self.loader, "sampler", None),
        ):
            if hasattr(s, "set_epoch"):
                s.set_epoch(epoch)
        # Augmentations depend only on (seed, epoch), whatever ran before (evaluation,
        # clustering, a resume): the loader's generator seeds the worker processes, and the
        # global torch RNG serves augmentation when there are no workers.
        epoch_seed = (self.seed * 100_003 + epoch) % 2**63
        gen = getattr(self.loader, "generator", None)
        if isinstance(gen, torch.Generator):
            gen.manual_seed(epoch_seed)
        torch.manual_seed(epoch_seed)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (``epoch`` is 1-based). Returns averaged statistics."""
        frozen = epoch <= self.freeze_epochs
        if hasattr(self.model, "freeze_body"):
            self.model.freeze_body(frozen)
        self._set_epoch(epoch)
        hook = self.hooks
        self.model.train()
        net = self._net()
        total_iters = len(self.loader)
        if self.iters_per_epoch:
            total_iters = min(total_iters, self.iters_per_epoch)
        sums: dict[str, float] = {}
        n_batches, n_images = 0, 0
        t0 = time.perf_counter()
        bar = tqdm(
            total=total_iters,
            desc=f"{self.desc} epoch {epoch}",
            disable=not self.verbose,
            leave=False,
            unit="it",
        )
        crit_params = [p for p in getattr(self.criterion, "parameters", lambda: [])()]
        for it, batch in enumerate(self.loader):
            if it >= total_iters:
                break
            threads.refresh()  # this process's share of the cores, re-checked every few s
            if batch.get("bad") and self.on_bad_images is not None:
                self.on_bad_images(batch["bad"])
            x = batch["img"].to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            batch = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            with autocast(self.device, self.amp):
                outputs = net(x)
            outputs = {k: (v.float() if torch.is_tensor(v) else v) for k, v in outputs.items()}
            loss, parts = self.criterion(outputs, batch)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"{self.desc}: the loss became {loss.item()} at epoch {epoch}, iteration "
                    f"{it} ({parts}); stopping. The last checkpoint is kept; lower the learning "
                    "rate or check the data"
                )
            self.optimizer.zero_grad(set_to_none=True)
            for opt in self.extra_optimizers:
                opt.zero_grad()
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
            D.all_reduce_grads(crit_params)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            for opt in self.extra_optimizers:
                opt.step()
            if hook is not None and hook.after_step is not None:
                hook.after_step(outputs, batch)
            crash_point("train_step")
            n_batches += 1
            n_images += x.shape[0]
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if self.verbose:
                elapsed = max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(
                    loss=f"{sums['loss'] / n_batches:.3f}",
                    lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                    img_s=f"{n_images * D.world_size() / elapsed:.1f}",
                )
                bar.update(1)
        bar.close()
        if n_batches == 0:
            raise TrainingError(f"{self.desc}: the loader produced no batch at epoch {epoch}")
        seconds = time.perf_counter() - t0
        stats = {k: v / n_batches for k, v in sums.items()}
        stats = D.all_reduce_mean(stats)
        stats["lr"] = float(self.optimizer.param_groups[0]["lr"])
        stats["images_per_s"] = n_images * D.world_size() / max(seconds, 1e-9)
        stats["epoch_s"] = seconds
        stats["body_frozen"] = float(frozen)
        if self.scheduler is not None:
            self.scheduler.step()
        self.epoch = epoch
        if any(not math.isfinite(v) for v in stats.values()):
            raise TrainingError(f"{self.desc}: non-finite statistics at epoch {epoch}: {stats}")
        return stats

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "extra_optimizers": [o.state_dict() for o in self.extra_optimizers],
        }
        if isinstance(self.criterion, nn.Module):
            state["criterion"] = self.criterion.state_dict()
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if isinstance(self.criterion, nn.Module) and "criterion" in state:
            self.criterion.load_state_dict(state["criterion"])
        self.optimizer.load_state_dict(state["optimizer"])
        for opt, s in zip(self.extra_optimizers, state.get("extra_optimizers", [])):
            opt.load_state_dict(s)
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
