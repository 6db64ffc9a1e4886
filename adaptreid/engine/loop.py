"""The one adaptation loop every method runs on (MSPLR section 3.2, PAST Algorithm 1, cluster
contrast): extract target features -> pseudo-labels -> train the method's stages -> evaluate
-> select -> repeat.

:func:`adapt` drives an :class:`~adaptreid.engine.method.AdaptationMethod` and owns everything
that is the same for every method:

* **steps and stages**: step ``s`` extracts the features of every target training image
  with the current model, asks the method for pseudo-labels (rank 0 only; broadcast to every
  rank), then trains the method's stages in order, then evaluates on the target's
  query/gallery when it has them (for the report; the labels never reach training);
* **resume inside a stage**: the state (step, stage, pseudo-labels, the method's extra
  arrays, the trainer's state, the selection counters, the number of metric records) is
  checkpointed after every epoch, atomically; a killed run resumes in the middle of a stage
  without clustering again, and ``metrics.jsonl`` is cut back to the checkpointed records;
* **model selection** (``adapt.select``): which step's model becomes ``best.pt``. The
  label-free rules (:mod:`adaptreid.evaluation.label_free`) score the model of step ``s``
  from the features and pseudo-labels that start step ``s + 1`` (the model in memory at that
  moment is still model ``s``, so no extra copy is kept), and the last model by one extra
  extraction and clustering after the last step; ``last`` keeps the last step; ``target_map``
  the best target test mAP (an oracle: it uses the target's test labels);
* **stopping**: ``adapt.max_steps`` steps, or ``adapt.patience`` steps without a better
  selection score;
* **records**: one ``labels`` record per pseudo-label round, one ``epoch`` record per epoch,
  one ``select`` record per scored model, one ``step`` record per step with its time
  breakdown (``time_extract_s``, ``time_distance_s``, ``time_cluster_s``, ``time_train_s``,
  ``time_evaluate_s``, ``time_checkpoint_s``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import Config, to_dict
from ..data.bad_images import BadImageLog
from ..data.datasets import ReidDataset, Sample
from ..data.loaders import build_test_loader
from ..data.transforms import build_transforms
from ..errors import ConfigError, TrainingError
from ..evaluation.label_free import label_free_scores
from ..models import ReidModel
from ..models.build import model_from_arch
from ..step_labels import save_step_labels
from . import distributed as D
from .builders import (
    bad_images_mode,
    evaluate_on,
    finish_run,
    format_metrics,
    load_dataset,
    model_from_cfg,
    resolve_precision_cfg,
    seed_everything,
    train_loader,
)
from .checkpoint import rng_state, set_rng_state
from .extract import Features, extract_features
from .faults import crash_point
from .method import AdaptationMethod, method_class
from .model_io import load_model_state, model_from_checkpoint
from .pseudo_step import StepFeatures
from .run import RunDir
from .trainer import Trainer

log = logging.getLogger("adaptreid")

__all__ = [
    "LABEL_FREE_RULES",
    "SELECT_RULES",
    "AdaptationLoop",
    "LoopContext",
    "LoopState",
    "adapt",
    "format_metrics",
    "ground_truth",
    "pseudo_samples",
]

#: ``adapt.select`` values that need no target label (scores of adaptreid.evaluation.label_free)
LABEL_FREE_RULES = ("agreement", "snd", "cross_camera")
#: every ``adapt.select`` value; ``target_map`` is the oracle
SELECT_RULES = (*LABEL_FREE_RULES, "last", "target_map")
_TIMES = ("extract", "distance", "cluster", "train", "evaluate", "checkpoint")


@dataclass
class LoopState:
    step: int = 0
    """Last step whose pseudo-labels exist (0: none yet)."""
    step_done: bool = True
    """Whether step ``step`` finished (trained and evaluated)."""
    stage: int = 0
    """Index of the stage being trained in step ``step``."""
    stage_begun: bool = False
    """Whether the method's ``begin_stage`` ran for that stage."""
    labels: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """The method's extra arrays of this step (numpy; e.g. PAST's ranking table)."""
    trainer: dict[str, Any] | None = None
    best_step: int = 0
    best_score: float = -math.inf
    stale: int = 0
    scored: int = -1
    """Last step whose model has its label-free score."""
    stopped: bool = False
    records: int = 0
    """Lines of metrics.jsonl when this state was saved (a resume cuts back to them)."""
    excluded: list[str] = field(default_factory=list)
    """Target train images left out as unreadable when this step's labels were made (the
    labels follow ``target.train`` without them; a resume leaves them out again)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """This step's time so far, per part (extract, distance, cluster, train, ...)."""

    def to_dict(self) -> dict[str, Any]:
        """Checkpointable (``weights_only`` loads take tensors, not numpy arrays)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["labels"] = (
            None if self.labels is None else torch.from_numpy(self.labels.astype(np.int64))
        )
        d["extra"] = {
            k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
            for k, v in self.extra.items()
        }
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopState:
        d = dict(d)
        labels = d.pop("labels", None)
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        state = cls(**known)
        state.labels = None if labels is None else labels.numpy()
        state.extra = {  # a method's extra arrays come back as numpy arrays
            k: v.numpy() if torch.is_tensor(v) else v for k, v in (state.extra or {}).items()
        }
        state.seconds = dict(state.seconds or {})
        state.excluded = list(state.excluded or [])
        return state


@dataclass
class LoopContext:
    """What a method may use from the loop (``method.ctx``)."""

    cfg: Config
    device: torch.device
    target: ReidDataset
    run: RunDir
    verbose: bool
    amp: str = "none"
    channels_last: bool = False
    """Training precision (``train.amp``, resolved)."""
    extract_amp: str = "none"
    extract_channels_last: bool = False
    """Extraction / evaluation precision (``train.amp: auto`` probes it separately)."""
    true_pids: np.ndarray | None = None
    """Target train identities when known: label quality in the records only."""
    state: LoopState = field(default_factory=LoopState)
    bad_images: str = "skip"
    """``data.bad_images`` resolved for the target (``auto``: skip)."""
    bad_log: BadImageLog = field(default_factory=BadImageLog)

    @property
    def step(self) -> int:
        return self.state.step

    def train_loader(self, samples: list[Sample]):
        """A P x K loader over ``samples`` with ``cfg.data``'s augmentation (unreadable images
        dropped from their batch in skip mode)."""
        return train_loader(self.cfg, samples, bad_images=self.bad_images)

    def note_bad(self, items, where: str) -> None:
        """Record unreadable images ``(index, path, reason)`` once each (``bad_images.json``)."""
        if items and self.bad_log.add_many(items, where=where) and D.is_main():
            self.bad_log.save(self.run.path)
            for _, path, reason in items:
                log.warning("skipping unreadable image %s (%s) in %s", path, reason, where)

    def extract(self, model: ReidModel, *, normalize: bool, desc: str = "") -> Features:
        """Features of the target training images, in dataset order (test-time transform),
        L2-normalised (per part) when ``normalize``. In skip mode an unreadable image has no
        row: ``features.kept`` are the positions in ``target.train`` of the rows."""
        d = self.cfg.data
        loader = build_test_loader(
            self.target.train,
            build_transforms(d.height, d.width, train=False),
            d.test_batch_size,
            d.num_workers,
            bad_images=self.bad_images,
        )
        feats = extract_features(
            model.to(self.device),
            loader,
            device=self.device,
            flip=self.cfg.adapt.extract_flip,
            normalize=normalize,
            amp=self.extract_amp,
            channels_last=self.extract_channels_last,
            desc=desc or f"step {self.state.step} features",
            verbose=self.verbose,
        )
        self.note_bad(feats.dropped, desc or f"step {self.state.step} features")
        return feats

    def drop_unreadable(self, feats: Features) -> None:
        """Leave the images ``feats`` could not read out of ``target.train`` for the rest of
        the run (the next labels follow the shorter list)."""
        if len(feats.kept) == len(self.target.train):
            return
        gone = sorted(set(range(len(self.target.train))) - set(feats.kept.tolist()))
        self.state.excluded += [self.target.train[i].path for i in gone]
        keep = set(feats.kept.tolist())
        self.target.train = [x for i, x in enumerate(self.target.train) if i in keep]
        if self.true_pids is not None:
            self.true_pids = self.true_pids[feats.kept]

    def exclude(self, paths: list[str]) -> None:
        """Leave ``paths`` out of ``target.train`` (a resume: as when the labels were made)."""
        if not paths:
            return
        gone = set(paths)
        keep = [i for i, x in enumerate(self.target.train) if x.path not in gone]
        self.target.train = [self.target.train[i] for i in keep]
        if self.true_pids is not None:
            self.true_pids = self.true_pids[keep]


def adapt(cfg: Config, *, resume: bool = False, verbose: bool = True) -> RunDir:
    """Run ``cfg.method`` on ``cfg.data.target``; returns the run folder."""
    return AdaptationLoop(cfg, resume=resume, verbose=verbose).run()


class AdaptationLoop:
    """One adaptation run (see the module docstring)."""

    def __init__(self, cfg: Config, *, resume: bool = False, verbose: bool = True) -> None:
        if cfg.adapt.select not in SELECT_RULES:
            raise ConfigError(
                f"adapt.select must be one of {', '.join(SELECT_RULES)}, got {cfg.adapt.select!r}"
            )
        if cfg.adapt.max_steps < 1:
            raise ConfigError(f"adapt.max_steps must be >= 1, got {cfg.adapt.max_steps}")
        method_class(cfg.method.name).validate(cfg)  # before anything is written
        self.resume = resume
        _, _, self.device = D.init(cfg.device)
        self.run_dir, self.cfg = RunDir.prepare(cfg, resume=resume)
        cfg = self.cfg
        seed_everything(cfg.seed)
        self.verbose = verbose and D.is_main()
        target = load_dataset(cfg, "target")
        self.ctx = LoopContext(
            cfg,
            self.device,
            target,
            self.run_dir,
            self.verbose,
            true_pids=ground_truth(target.train),
            bad_images=bad_images_mode(cfg, "target"),
            bad_log=BadImageLog.load(self.run_dir.path),
        )
        self.method: AdaptationMethod = method_class(cfg.method.name)(cfg, self.ctx)
        self.rule = cfg.adapt.select

    @property
    def state(self) -> LoopState:
        return self.ctx.state

    # ------------------------------------------------------------------ the loop
    def run(self) -> RunDir:
        model = self._start()
        s = self.state
        while not s.stopped:
            if s.step_done:
                if s.step >= self.cfg.adapt.max_steps:
                    break
                model = self._new_step(model)
                if s.stopped:
                    break
            model = self._train_stages(model)
            self._finish_step(model)
        if self.rule in LABEL_FREE_RULES and s.scored < s.step and not s.stopped:
            self._probe(model)  # the last model's score: one more extraction and clustering
        finish_run(
            self.cfg,
            self.run_dir,
            self.ctx.target,
            self.device,
            stage=self.method.name,
            verbose=self.verbose,
            amp=self.ctx.extract_amp,
            channels_last=self.ctx.extract_channels_last,
            bad_images=self.ctx.bad_images,
            on_bad=lambda bad: self.ctx.note_bad(bad, "final evaluation"),
        )
        if len(self.ctx.bad_log):
            log.warning(
                "%d unreadable target image(s) were skipped: listed in %s and report.md",
                len(self.ctx.bad_log),
                self.run_dir.path / "bad_images.json",
            )
        D.barrier()
        return self.run_dir

    def _start(self) -> ReidModel:
        """The model to adapt: the run folder's last one when resuming, else the source
        checkpoint (``adapt.init_checkpoint``; the configured backbone with its
        ``model.pretrained`` weights without one), evaluated on the target as step 0."""
        model = self._resume() if self.resume else None
        if model is None:
            if self.cfg.adapt.init_checkpoint:
                model, _ = model_from_checkpoint(self.cfg.adapt.init_checkpoint)
                log.info("adapting %s with %s", self.cfg.adapt.init_checkpoint, self.method.name)
            else:
                log.info(
                    "no adapt.init_checkpoint: adapting %s from model.pretrained (%s)",
                    self.cfg.model.backbone,
                    self.cfg.model.pretrained or "random init",
                )
                model = model_from_cfg(self.cfg, 0)
            model = self.method.initial_model(model)
        c = self.ctx
        c.amp, c.channels_last = resolve_precision_cfg(self.cfg, model, self.device)
        c.extract_amp, c.extract_channels_last = resolve_precision_cfg(
            self.cfg, model, self.device, mode="extract"
        )
        if self.resume and self.run_dir.has_checkpoint():
            return model
        metrics = self._evaluate(model)
        self.run_dir.log_metrics(
            {"kind": "step", "step": 0, "stage": "direct_transfer", **(metrics or {})}
        )
        if metrics:
            log.info("step 0 (direct transfer): %s", format_metrics(metrics))
        s = self.state
        if self.rule == "target_map" and metrics:
            s.best_score = metrics["mAP"]
        self._save(model, best=True)
        return model

    def _resume(self) -> ReidModel | None:
        if not self.run_dir.has_checkpoint():
            return None
        state = self.run_dir.load_last()
        model = model_from_arch(state["arch"])
        load_model_state(model, state["model"], source=str(self.run_dir.last))
        self.ctx.state = LoopState.from_dict(state["loop"])
        set_rng_state(state["rng"])
        self.run_dir.truncate_records(self.state.records)
        self.ctx.exclude(self.state.excluded)
        s = self.state
        where = (
            "finished"
            if s.step_done
            else f"stage {s.stage}, epoch {(s.trainer or {}).get('epoch', 0)}"
        )
        log.info("resumed %s at step %d (%s)", self.run_dir.path, s.step, where)
        return model

    def _new_step(self, model: ReidModel) -> ReidModel:
        """Features of the current model (the model of step ``s``) -> its label-free score ->
        stop, or pseudo-labels of step ``s + 1``."""
        s = self.state
        step = s.step + 1
        seconds = {k: 0.0 for k in _TIMES}
        result, extra, feats = self._pseudo_labels(model, step, seconds)
        crash_point("cluster")
        if s.scored < s.step:  # (a resume after a saved score does not score again)
            self._score(model, s.step, feats, result.labels)  # recorded whatever the rule
        if s.stopped:
            return model
        s.step, s.step_done, s.stage, s.stage_begun, s.trainer = step, False, 0, False, None
        s.labels, s.extra, s.seconds = result.labels, extra, seconds
        if D.is_main():  # for report.html's cluster samples (labels follow target.train)
            train = self.ctx.target.train
            save_step_labels(
                self.run_dir.path, step, [x.path for x in train], s.labels, [x.camid for x in train]
            )
        record = {"kind": "labels", "step": step, **result.stats}
        record.update({k: v for k, v in result.params.items() if k in ("eps", "k")})
        record.update({f"quality_{k}": v for k, v in (result.quality or {}).items()})
        self.run_dir.log_metrics(record)
        log.info(
            "step %d pseudo-labels: %s", step, format_label_stats(result.stats, result.quality)
        )
        model = self.method.on_labels(model, s.labels, s.extra)
        self._save(model)
        return model

    def _pseudo_labels(self, model: ReidModel, step: int, seconds: dict[str, float]):
        """Extract (every rank), then the method's pseudo-labels on rank 0, broadcast."""
        t0 = time.perf_counter()
        feats = self.ctx.extract(
            model, normalize=self.method.normalize_features, desc=f"step {step} features"
        )
        self.ctx.drop_unreadable(feats)  # the labels will follow target.train without them
        seconds["extract"] += time.perf_counter() - t0
        sf = StepFeatures(
            feats, self.cfg.pseudo, seed=self.cfg.seed, step=step, true_pids=self.ctx.true_pids
        )
        if D.world_size() > 1 and self.method.uses_jaccard():
            sf.jaccard(distributed=True)  # every rank computes its share of the top-k
        out = None
        if D.is_main():
            result, extra = self.method.pseudo_labels(sf)
            if not (result.labels >= 0).any():
                raise TrainingError(f"step {step}: no pseudo-label cluster to train on")
            out = (result, extra, sf.seconds)
        result, extra, sec = D.broadcast_object(out)
        seconds["distance"] += sec["distance"]
        seconds["cluster"] += sec["cluster"]
        return result, extra, feats

    def _score(self, model: ReidModel, step: int, feats: Features, relabelled) -> None:
        """Label-free scores of the model of ``step`` (rank 0; broadcast); ``best.pt`` and
        the patience counter follow ``adapt.select`` when it is a label-free rule."""
        s = self.state
        # the labels the model was trained on, for the images these features have
        trained_on = s.labels[feats.kept] if step > 0 else None
        scores = None
        if D.is_main():
            scores = label_free_scores(
                feats.feats, feats.camids, trained_on, relabelled, seed=self.cfg.seed
            )
        scores = D.broadcast_object(scores)
        s.scored = step
        self.run_dir.log_metrics({"kind": "select", "step": step, **scores})
        if self.rule not in LABEL_FREE_RULES:
            return
        value = scores[self.rule]
        if math.isfinite(value) and value > s.best_score:
            s.best_score, s.best_step, s.stale = value, step, 0
            self._save(model, best=True)  # the model in memory is still the model of `step`
            log.info("model of step %d: %s %.4f (best so far)", step, self.rule, value)
        else:
            s.stale += step > 0
            log.info(
                "model of step %d: %s %.4f (best: step %d, %.4f)",
                step,
                self.rule,
                value,
                s.best_step,
                s.best_score,
            )
            if 0 < self.cfg.adapt.patience <= s.stale:
                log.info("stopping: %d steps without a better %s", s.stale, self.rule)
                s.stopped = True
                self._save(model)

    def _probe(self, model: ReidModel) -> None:
        """Score the last model: extract, cluster as a next step would, record, select."""
        seconds = {k: 0.0 for k in _TIMES}
        result, _, feats = self._pseudo_labels(model, self.state.step + 1, seconds)
        record = {"kind": "labels", "step": self.state.step + 1, "probe": True, **result.stats}
        record.update({k: v for k, v in result.params.items() if k in ("eps", "k")})
        record.update({f"quality_{k}": v for k, v in (result.quality or {}).items()})
        self.run_dir.log_metrics(record)
        self._score(model, self.state.step, feats, result.labels)
        self._save(model)

    def _train_stages(self, model: ReidModel) -> ReidModel:
        s, cfg = self.state, self.cfg
        stages = self.method.stages
        while s.stage < len(stages):
            name = stages[s.stage]
            if not s.stage_begun:
                model = self.method.begin_stage(name, model, s.labels, s.extra)
                s.stage_begun, s.trainer = True, None
                self._save(model)
            spec = self.method.build_stage(name, model, s.labels, s.extra)
            if spec is not None:
                desc = f"step {s.step}" if len(stages) == 1 else f"step {s.step} {name}"
                trainer = Trainer(
                    model,
                    spec.criterion,
                    spec.optimizer,
                    spec.loader,
                    device=self.device,
                    scheduler=spec.scheduler,
                    extra_optimizers=list(spec.extra_optimizers),
                    freeze_epochs=spec.freeze_epochs,
                    amp=self.ctx.amp,
                    channels_last=self.ctx.channels_last,
                    iters_per_epoch=cfg.train.iters_per_epoch,
                    seed=cfg.seed * 1000 + s.step,
                    desc=desc,
                    verbose=self.verbose,
                    hooks=spec.hooks,
                    on_bad_images=lambda bad, d=desc: self.ctx.note_bad(bad, f"{d} training"),
                )
                if s.trainer is not None:  # resuming inside this stage
                    trainer.load_state_dict({**s.trainer, "model": model.state_dict()})
                for epoch in range(trainer.epoch + 1, spec.epochs + 1):
                    t0 = time.perf_counter()
                    stats = trainer.train_epoch(epoch)
                    self._add_time("train", time.perf_counter() - t0)
                    s.trainer = {k: v for k, v in trainer.state_dict().items() if k != "model"}
                    self.run_dir.log_metrics(
                        {"kind": "epoch", "step": s.step, "stage": name, "epoch": epoch, **stats}
                    )
                    self._save(model)
            s.stage, s.stage_begun, s.trainer = s.stage + 1, False, None
        return model

    def _finish_step(self, model: ReidModel) -> None:
        s = self.state
        metrics = self._evaluate(model)
        s.step_done = True
        is_best = self.rule == "last"
        if self.rule == "target_map" and metrics is not None:
            if metrics["mAP"] > s.best_score:
                s.best_score, s.best_step, s.stale, is_best = metrics["mAP"], s.step, 0, True
            else:
                s.stale += 1
                if 0 < self.cfg.adapt.patience <= s.stale:
                    s.stopped = True
        elif self.rule == "target_map":  # no query/gallery: nothing to choose by
            is_best = True
        if is_best:
            s.best_step = s.step
        record = {"kind": "step", "step": s.step, "stage": self.method.name, **(metrics or {})}
        record["best_step"] = s.best_step
        record.update({f"time_{k}_s": round(v, 3) for k, v in s.seconds.items()})
        record["time_s"] = round(sum(s.seconds.values()), 3)
        self.run_dir.log_metrics(record)
        self._save(model, best=is_best)
        log.info(
            "step %d: %s (%s); time %s",
            s.step,
            format_metrics(metrics) if metrics else "no query/gallery to evaluate",
            f"best.pt: step {s.best_step} by {self.rule}",
            ", ".join(f"{k} {v:.0f} s" for k, v in s.seconds.items() if v >= 0.5),
        )

    # ------------------------------------------------------------------ helpers
    def _evaluate(self, model: ReidModel) -> dict[str, float] | None:
        target = self.ctx.target
        if not (target.query and target.gallery):
            return None
        t0 = time.perf_counter()
        out = evaluate_on(
            self.cfg,
            model.to(self.device),
            target,
            self.device,
            verbose=self.verbose,
            amp=self.ctx.extract_amp,
            channels_last=self.ctx.extract_channels_last,
            bad_images=self.ctx.bad_images,
            on_bad=lambda bad: self.ctx.note_bad(bad, f"step {self.state.step} evaluation"),
        )
        self._add_time("evaluate", time.perf_counter() - t0)
        return out

    def _add_time(self, part: str, seconds: float) -> None:
        self.state.seconds[part] = self.state.seconds.get(part, 0.0) + seconds

    def _save(self, model: ReidModel, *, best: bool = False) -> None:
        t0 = time.perf_counter()
        s = self.state
        s.records = self.run_dir.num_records()
        self.run_dir.save(
            {
                "format": "adaptreid-checkpoint",
                "version": 2,
                "method": self.method.name,
                "arch": model.arch,
                "model": model.state_dict(),
                "input_size": [self.cfg.data.height, self.cfg.data.width],
                "config": to_dict(self.cfg),
                "loop": s.to_dict(),
                "rng": rng_state(),
            },
            best=best,
        )
        if not s.step_done:
            self._add_time("checkpoint", time.perf_counter() - t0)


def format_label_stats(stats: dict, quality: dict | None) -> str:
    """One line of pseudo-label statistics (and quality, analysis only) for the log."""
    out = ", ".join(
        f"{k} {stats[k]:.3g}" if isinstance(stats[k], float) else f"{k} {stats[k]}"
        for k in ("num_clusters", "num_outliers", "portion_kept", "multi_camera_fraction")
        if k in stats
    )
    if quality:
        out += ", " + ", ".join(
            f"{k} {quality[k]:.3f}" for k in ("precision", "recall", "f1", "nmi") if k in quality
        )
    return out


def pseudo_samples(train: list[Sample], labels: np.ndarray) -> list[Sample]:
    """The pseudo-labelled training set: images with a label >= 0, pid = the label."""
    return [Sample(s.path, int(lab), s.camid) for s, lab in zip(train, labels) if lab >= 0]


def ground_truth(train: list[Sample]) -> np.ndarray | None:
    """Target train pids when every image has one (for label-quality analysis only)."""
    pids = np.array([s.pid for s in train])
    return pids if len(pids) and (pids >= 0).all() else None
