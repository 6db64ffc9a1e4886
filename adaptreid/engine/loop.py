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

import numpy as np

from ..config import SELECT_RULES as _CONFIG_SELECT_RULES
from ..config import Config
from ..data.datasets import ground_truth
from ..errors import ConfigError, TrainingError
from ..evaluation.label_free import choose_holdout, holdout_map, label_free_scores
from ..models import ReidModel
from ..models.build import model_from_arch
from ..rundir.model_io import load_model_state, model_from_checkpoint
from ..rundir.run import RunDir, start_name
from ..rundir.step_labels import save_step_labels
from ..runtime import distributed as D
from ..runtime.faults import crash_point
from .builders import (
    bad_images_mode,
    evaluate_on,
    finish_run,
    format_metrics,
    image_cache_dir,
    load_dataset,
    log_precision,
    model_from_cfg,
    remove_run_image_cache,
    run_precision,
    seed_everything,
)
from .context import LoopContext, LoopState, step_seed
from .extract import Features
from .method import AdaptationMethod, method_class
from .pseudo_step import StepFeatures
from .trainer import Trainer, TrainSettings

log = logging.getLogger("adaptreid")

__all__ = [
    "LABEL_FREE_RULES",
    "SELECT_RULES",
    "AdaptationLoop",
    "LoopContext",
    "LoopState",
    "adapt",
    "format_metrics",
]

#: ``adapt.select`` values that need no target label (scores of adaptreid.evaluation.label_free)
LABEL_FREE_RULES = ("agreement", "holdout", "snd", "cross_camera")
#: every ``adapt.select`` value; ``target_map`` is the oracle
SELECT_RULES = _CONFIG_SELECT_RULES  # defined with adapt.select, checked when a config loads
_TIMES = ("extract", "distance", "cluster", "train", "evaluate", "checkpoint")


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
        if cfg.adapt.select == "holdout" and not 0 < cfg.adapt.holdout < 1:
            raise ConfigError(
                "adapt.select=holdout scores each model on clusters held back from training: "
                f"adapt.holdout must be in (0, 1), got {cfg.adapt.holdout} (0.15 is the "
                "default; or choose another rule, e.g. adapt.select=agreement adapt.holdout=0)"
            )
        if not 0 <= cfg.pseudo.max_kept_growth <= 1:
            raise ConfigError(
                f"pseudo.max_kept_growth must be in [0, 1], got {cfg.pseudo.max_kept_growth}"
            )
        if not cfg.pseudo.giant_factor > 1:
            raise ConfigError(f"pseudo.giant_factor must be > 1, got {cfg.pseudo.giant_factor}")
        if cfg.adapt.max_steps < 1:
            raise ConfigError(f"adapt.max_steps must be >= 1, got {cfg.adapt.max_steps}")
        if cfg.adapt.select == "target_map" and cfg.eval.steps != "every":
            raise ConfigError(
                "adapt.select=target_map chooses by each step's target test mAP: it needs "
                f"eval.steps=every, got eval.steps={cfg.eval.steps}"
            )
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
            image_cache_dir=image_cache_dir(cfg, self.run_dir.path),
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
            image_cache_dir=self.ctx.image_cache_dir,
            on_bad=lambda bad: self.run_dir.note_bad(bad, "final evaluation"),
        )
        if len(self.run_dir.bad_log):
            log.warning(
                "%d unreadable target image(s) were skipped: listed in %s and report.md",
                len(self.run_dir.bad_log),
                self.run_dir.path / "bad_images.json",
            )
        D.barrier()
        remove_run_image_cache(self.cfg, self.run_dir.path)
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
        record = run_precision(self.cfg, model, self.device)
        c.amp, c.channels_last = record["train"]["amp"], record["train"]["channels_last"]
        c.extract_amp = record["extract"]["amp"]
        c.extract_channels_last = record["extract"]["channels_last"]
        log_precision(self.run_dir, record)
        if self.resume and self.run_dir.has_checkpoint():
            return model
        metrics = self._evaluate(model)
        self.run_dir.log_metrics(
            {"kind": "step", "step": 0, "stage": "direct_transfer", **(metrics or {})}
        )
        if metrics:
            a, m = self.cfg.adapt, self.cfg.model
            log.info(
                "step 0 (%s): %s",
                start_name(a.init_checkpoint, m.pretrained),
                format_metrics(metrics),
            )
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
        self.run_dir.restore(state)
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
        s.labels, s.extra, s.seconds = self._hold_back(result.labels), extra, seconds
        s.portion_kept = float(result.stats.get("portion_kept", 0.0))
        if D.is_main():  # for report.html's cluster samples (labels follow target.train)
            train = self.ctx.target.train
            save_step_labels(
                self.run_dir.path, step, [x.path for x in train], s.labels, [x.camid for x in train]
            )
        record = {"kind": "labels", "step": step, **result.stats}
        if s.holdout:
            record["held_back"] = len(s.holdout)
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
            feats,
            self.cfg.pseudo,
            seed=self.cfg.seed,
            step=step,
            true_pids=self.ctx.true_pids,
            max_portion=self._max_portion(),
            min_portion=self._min_portion(),
            ranking=self.method.ranking_width(),
        )
        if D.world_size() > 1 and self.method.uses_jaccard() and sf.shards_jaccard():
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

    def _max_portion(self) -> float:
        """``pseudo.max_kept_growth``: the portion of the images the next labels may keep, the
        last labels' plus the growth; 1 when off or at step 1."""
        growth, s = self.cfg.pseudo.max_kept_growth, self.state
        if growth <= 0 or s.step == 0:
            return 1.0
        return min(1.0, s.portion_kept + growth)

    def _min_portion(self) -> float:
        """``pseudo.kept_never_shrinks``: the last labels' portion kept; 0 when off or at
        step 1."""
        if not self.cfg.pseudo.kept_never_shrinks or self.state.step == 0:
            return 0.0
        return self.state.portion_kept

    def _hold_back(self, labels: np.ndarray) -> np.ndarray:
        """``adapt.holdout``: on the first labels, choose the held-back clusters; at every
        step, leave their images out of training (label -1)."""
        s, frac, train = self.state, self.cfg.adapt.holdout, self.ctx.target.train
        if frac <= 0:
            return labels
        if not s.holdout and s.step == 1:
            cams = np.asarray([x.camid for x in train])
            chosen = choose_holdout(labels, cams, frac, seed=self.cfg.seed)
            s.holdout = {
                x.path: int(c) for x, c in zip(train, labels.tolist()) if c in set(chosen.tolist())
            }
            if not len(chosen) and self.rule == "holdout":
                raise TrainingError(
                    "adapt.select=holdout: the first pseudo-labels have fewer than 2 clusters "
                    "spanning two cameras, so none can be held back to score models on. Check "
                    "the target's camera ids, or choose another rule (adapt.select=agreement "
                    "adapt.holdout=0)"
                )
            log.info(
                "holding back %d clusters (%d images) of the step-1 labels to score models on",
                len(chosen),
                len(s.holdout),
            )
        out = labels.copy()
        for i, x in enumerate(train):
            if x.path in s.holdout:
                out[i] = -1
        return out

    def _holdout_score(self, feats: Features) -> float:
        """:func:`holdout_map` of the model whose features ``feats`` are (rows follow
        ``target.train``), on the held-back images; NaN without them."""
        train, held = self.ctx.target.train, self.state.holdout
        rows = [i for i, x in enumerate(train) if x.path in held]
        if not rows:
            return float("nan")
        others = [i for i, x in enumerate(train) if x.path not in held]
        labels = np.asarray([held[train[i].path] for i in rows])
        cams = np.asarray([train[i].camid for i in rows])
        f = feats.feats
        return holdout_map(f[rows], labels, cams, f[others], seed=self.cfg.seed)

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
            if self.cfg.adapt.holdout > 0:
                # the source model made the held-back labels: it is not scored on them
                scores["holdout"] = self._holdout_score(feats) if step > 0 else float("nan")
        scores = D.broadcast_object(scores)
        s.scored = step
        self.run_dir.log_metrics({"kind": "select", "step": step, **scores})
        if self.rule not in LABEL_FREE_RULES:
            return
        value = scores.get(self.rule, float("nan"))
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
                self._stop(step)
                self._save(model)

    def _stop(self, step: int) -> None:
        """``adapt.patience`` ran out at the model of ``step``: end the run (a ``stop``
        record tells the report)."""
        s = self.state
        log.info(
            "stopping after step %d: %d steps without a better %s; best.pt is step %d's model",
            step,
            s.stale,
            self.rule,
            s.best_step,
        )
        s.stopped = True
        self.run_dir.log_metrics(
            {
                "kind": "stop",
                "step": step,
                "max_steps": self.cfg.adapt.max_steps,
                "rule": self.rule,
                "stale": s.stale,
                "patience": self.cfg.adapt.patience,
                "best_step": s.best_step,
            }
        )

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
                settings = TrainSettings(
                    amp=self.ctx.amp,
                    channels_last=self.ctx.channels_last,
                    iters_per_epoch=cfg.train.iters_per_epoch,
                    seed=step_seed(cfg.seed, s.step),
                    desc=desc,
                    verbose=self.verbose,
                )
                trainer = Trainer(
                    model,
                    spec,
                    settings,
                    device=self.device,
                    on_bad_images=lambda bad, d=desc: self.run_dir.note_bad(bad, f"{d} training"),
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
                    self._stop(s.step)
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
        if self.cfg.adapt.keep_steps and D.is_main():
            self.run_dir.save_step_model(
                s.step,
                model,
                self.cfg,
                labels=s.labels,
                paths=[x.path for x in self.ctx.target.train],
                method=self.method.name,
            )
        log.info(
            "step %d: %s (%s); time %s",
            s.step,
            format_metrics(metrics) if metrics else self._not_evaluated(),
            f"best.pt: step {s.best_step} by {self.rule}",
            ", ".join(f"{k} {v:.0f} s" for k, v in s.seconds.items() if v >= 0.5),
        )

    # ------------------------------------------------------------------ helpers
    def _evaluate(self, model: ReidModel) -> dict[str, float] | None:
        """The step's target test metrics (None without query / gallery, or with
        ``eval.steps: final``: then only ``best.pt`` is evaluated, at the end). Each query's
        AP and identity go to a ``per_query`` record before the step's, so that two steps, or
        a rule's pick and the oracle's, can be compared with
        :func:`~adaptreid.evaluation.map_difference_interval`."""
        target = self.ctx.target
        if not (target.query and target.gallery) or self.cfg.eval.steps == "final":
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
            image_cache_dir=self.ctx.image_cache_dir,
            on_bad=lambda bad: self.run_dir.note_bad(bad, f"step {self.state.step} evaluation"),
            per_query=True,
        )
        self._add_time("evaluate", time.perf_counter() - t0)
        per_query = out.pop("per_query")
        self.run_dir.log_metrics({"kind": "per_query", "step": self.state.step, **per_query})
        return out

    def _not_evaluated(self) -> str:
        if self.cfg.eval.steps == "final":
            return "not evaluated (eval.steps: final)"
        return "no query/gallery to evaluate"

    def _add_time(self, part: str, seconds: float) -> None:
        self.state.seconds[part] = self.state.seconds.get(part, 0.0) + seconds

    def _save(self, model: ReidModel, *, best: bool = False) -> None:
        t0 = time.perf_counter()
        s = self.state
        s.records = self.run_dir.num_records()
        self.run_dir.save_state(
            model, self.cfg, best=best, method=self.method.name, loop=s.to_dict()
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
