"""The progressive-learning loop both adaptation recipes share (MSPLR section 3.2, PAST
Algorithm 1): extract target features -> pseudo-labels -> fine-tune -> evaluate -> repeat.

:class:`ProgressiveRun` keeps the loop's state (step, best target mAP, steps without gain,
the current step's pseudo-labels and trainer state) and writes it to the run folder after
every epoch, so that a killed run resumes in the middle of a step without clustering again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import Config, to_dict
from ..data.datasets import ReidDataset, Sample
from ..data.loaders import build_test_loader
from ..data.transforms import build_transforms
from ..engine import distributed as D
from ..engine.checkpoint import rng_state, set_rng_state
from ..engine.extract import Features, extract_features
from ..engine.model_io import load_model_state, model_from_checkpoint
from ..engine.run import RunDir
from ..models import ReidModel
from ..models.build import model_from_arch
from .common import evaluate_on, model_from_cfg

log = logging.getLogger("adaptreid")


@dataclass
class LoopState:
    step: int = 0
    """Last step whose pseudo-labels exist (0: none yet)."""
    step_done: bool = True
    """Whether step ``step`` finished (fine-tuned and evaluated)."""
    best_map: float = -1.0
    best_step: int = 0
    stale: int = 0
    labels: np.ndarray | None = None
    trainer: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "step_done": self.step_done,
            "best_map": self.best_map,
            "best_step": self.best_step,
            "stale": self.stale,
            "labels": None
            if self.labels is None
            else torch.from_numpy(self.labels.astype(np.int64)),
            "trainer": self.trainer,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopState:
        labels = d.get("labels")
        return cls(
            step=int(d["step"]),
            step_done=bool(d["step_done"]),
            best_map=float(d["best_map"]),
            best_step=int(d["best_step"]),
            stale=int(d["stale"]),
            labels=None if labels is None else labels.numpy(),
            trainer=d.get("trainer"),
            extra=dict(d.get("extra") or {}),
        )


class ProgressiveRun:
    """Run-folder bookkeeping for a progressive adaptation loop."""

    def __init__(
        self, cfg: Config, run: RunDir, device: torch.device, method: str, *, verbose: bool = True
    ) -> None:
        self.cfg = cfg
        self.verbose = verbose and D.is_main()
        self.run = run
        self.device = device
        self.method = method
        self.state = LoopState()

    # ------------------------------------------------------------------ model
    def initial_model(self) -> ReidModel:
        """The source-trained model (``adapt.init_checkpoint``), else the configured backbone
        with its ``model.pretrained`` weights (e.g. ImageNet)."""
        if self.cfg.adapt.init_checkpoint:
            model, _ = model_from_checkpoint(self.cfg.adapt.init_checkpoint)
            log.info("adapting %s", self.cfg.adapt.init_checkpoint)
            return model
        log.info(
            "no adapt.init_checkpoint: adapting %s from model.pretrained", self.cfg.model.backbone
        )
        return model_from_cfg(self.cfg, 0)

    def resume(self) -> ReidModel | None:
        """Load the last checkpoint if there is one; returns its model (else None)."""
        if not self.run.has_checkpoint():
            return None
        state = self.run.load_last()
        model = model_from_arch(state["arch"])
        load_model_state(model, state["model"], source=str(self.run.last))
        self.state = LoopState.from_dict(state["loop"])
        set_rng_state(state["rng"])
        step = self.state.step
        self.run.truncate_metrics(
            lambda r: r.get("step", 0) < step or (r.get("step", 0) == step and self._kept(r))
        )
        log.info(
            "resumed %s at step %d (%s)",
            self.run.path,
            step,
            "finished"
            if self.state.step_done
            else f"epoch {(self.state.trainer or {}).get('epoch', 0)}",
        )
        return model

    def _kept(self, record: dict) -> bool:
        """On resume, keep the records of the current step up to the checkpointed point."""
        if self.state.step_done:
            return True
        done_epochs = int((self.state.trainer or {}).get("epoch", 0))
        return record.get("kind") in ("labels",) or (
            record.get("kind") == "epoch" and record.get("epoch", 0) <= done_epochs
        )

    def save(self, model: ReidModel, *, best: bool = False) -> None:
        self.run.save(
            {
                "format": "adaptreid-checkpoint",
                "version": 1,
                "method": self.method,
                "arch": model.arch,
                "model": model.state_dict(),
                "input_size": [self.cfg.data.height, self.cfg.data.width],
                "config": to_dict(self.cfg),
                "loop": self.state.to_dict(),
                "rng": rng_state(),
            },
            best=best,
        )

    # ------------------------------------------------------------------ steps
    def target_features(
        self, model: ReidModel, target: ReidDataset, *, normalize: bool
    ) -> Features:
        """Features of every target training image, in dataset order (test-time transform)."""
        tf = build_transforms(self.cfg.data.height, self.cfg.data.width, train=False)
        loader = build_test_loader(
            target.train, tf, self.cfg.data.test_batch_size, self.cfg.data.num_workers
        )
        return extract_features(
            model.to(self.device),
            loader,
            device=self.device,
            flip=self.cfg.adapt.extract_flip,
            normalize=normalize,
            amp=self.cfg.train.amp,
            channels_last=self.cfg.train.channels_last,
            desc=f"step {self.state.step} features",
            verbose=self.verbose,
        )

    def evaluate(self, model: ReidModel, target: ReidDataset) -> dict[str, float] | None:
        if not (target.query and target.gallery):
            return None
        return evaluate_on(self.cfg, model, target, self.device, verbose=self.verbose)

    def track(self, metrics: dict[str, float] | None) -> bool:
        """Update best / stale counters after a step; returns whether this step is the best.

        Without a query/gallery split (no labels at all) every step counts as the best and
        the loop runs ``adapt.max_steps`` steps."""
        s = self.state
        if metrics is None:
            s.best_step = s.step
            return True
        if metrics["mAP"] > s.best_map:
            s.best_map, s.best_step, s.stale = metrics["mAP"], s.step, 0
            return True
        s.stale += 1
        return False

    def start(self, target: ReidDataset, *, resume: bool) -> ReidModel:
        """The model to adapt: the run folder's last one when resuming, else
        :meth:`initial_model`, evaluated on the target as step 0 (direct transfer)."""
        model = self.resume() if resume else None
        if model is not None:
            return model
        model = self.initial_model()
        metrics = self.evaluate(model.to(self.device), target)
        self.track(metrics)
        self.run.log_metrics(
            {"kind": "step", "step": 0, "stage": "direct_transfer", **(metrics or {})}
        )
        if metrics:
            log.info("step 0 (direct transfer): %s", format_metrics(metrics))
        self.save(model, best=True)
        return model

    def finish_step(
        self, model: ReidModel, target: ReidDataset, started: float, *, unit: str = "step"
    ) -> None:
        """Evaluate after a step (an iteration, for PAST), update best / stale, log the step
        record and save (``best.pt`` when it is the best). ``started``: the step's
        ``time.perf_counter()`` at its start."""
        s = self.state
        metrics = self.evaluate(model, target)
        s.step_done, s.trainer = True, None
        is_best = self.track(metrics)
        record = {"kind": "step", "step": s.step, "stage": self.method, **(metrics or {})}
        record["best_step"], record["time_s"] = s.best_step, time.perf_counter() - started
        self.run.log_metrics(record)
        self.save(model, best=is_best)
        log.info(
            "%s %d: %s%s",
            unit,
            s.step,
            format_metrics(metrics) if metrics else "(no query/gallery to evaluate)",
            " (best)" if is_best else f" (best: {unit} {s.best_step})",
        )

    def should_stop(self) -> bool:
        return self.state.step >= self.cfg.adapt.max_steps or (
            self.state.stale >= self.cfg.adapt.patience > 0
        )


def format_metrics(m: dict) -> str:
    return " ".join(f"{k} {m[k]:.4f}" for k in ("rank1", "rank5", "mAP", "mINP") if k in m)


def pseudo_samples(train: list[Sample], labels: np.ndarray) -> list[Sample]:
    """The pseudo-labelled training set: images with a label >= 0, pid = the label."""
    return [Sample(s.path, int(lab), s.camid) for s, lab in zip(train, labels) if lab >= 0]


def ground_truth(train: list[Sample]) -> np.ndarray | None:
    """Target train pids when every image has one (for label-quality analysis only)."""
    pids = np.array([s.pid for s in train])
    return pids if len(pids) and (pids >= 0).all() else None
