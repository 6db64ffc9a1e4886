"""MSPLR: multi-step pseudo-label refinement (seed 000_a9e123b12ceb63e4, section 3.6.2).

One step of the loop (Figure 1):

1. extract features of every target training image with the current model;
2. camera-guided normalisation, eq. 4 (``pseudo.camera_norm``);
3. cluster: DBSCAN (eps, min_samples 4) or k-means (k = N // 15, eq. 1) (``pseudo.method``);
4. cluster selection, section 3.4: keep clusters with >= K images and >= 2 cameras;
5. fine-tune on the pseudo-labelled images with a new classifier: body frozen for the first
   ``train.freeze_epochs`` epochs (20 in the paper), then all layers, with the source
   recipe's losses (eq. 5) and schedule (eq. 6);
6. evaluate on the target query/gallery; keep the best model.

Steps repeat until ``adapt.patience`` steps bring no gain or ``adapt.max_steps`` is reached
(progressive learning, section 3.2). Every row of Tables 3 and 4 is a config switch:
``model.backbone`` (resnet50 / resnet50_ibn_a), ``adapt.max_steps`` (1 = "+DA", more = "+PL"),
``pseudo.select``, ``pseudo.camera_norm``, ``pseudo.method`` (dbscan / kmeans).
"""

from __future__ import annotations

import inspect
import logging
import time

from ..config import Config
from ..engine import distributed as D
from ..engine.faults import crash_point
from ..engine.run import RunDir
from ..engine.trainer import Trainer
from ..errors import TrainingError
from ..losses.reid_loss import build_reid_loss
from ..pseudo.labels import auto_eps, make_pseudo_labels, sweep_eps
from .common import finish_run, load_dataset, optimizer_from_cfg, seed_everything, train_loader
from .progressive import ProgressiveRun, ground_truth, pseudo_samples

log = logging.getLogger("adaptreid")


def pseudo_label_kwargs(cfg: Config) -> dict:
    p = cfg.pseudo
    return dict(
        camera_norm=p.camera_norm,
        method=p.method,
        distance=p.distance,
        eps=p.eps,
        min_samples=p.min_samples,
        k=p.kmeans_k or None,
        min_cluster_size=p.min_cluster_size,
        k1=p.k1,
        k2=p.k2,
        select=p.select,
        # a selection rule is switched off by making it keep everything
        min_size=p.min_size if p.enforce_size else 1,
        min_cameras=p.min_cameras if p.enforce_cameras else 1,
        seed=cfg.seed,
    )


def sweep_kwargs(kwargs: dict) -> dict:
    """The subset of make_pseudo_labels' arguments that the eps sweep takes."""
    accepted = inspect.signature(sweep_eps).parameters
    return {k: v for k, v in kwargs.items() if k in accepted and k != "true_pids"}


def adapt_msplr(cfg: Config, *, resume: bool = False, verbose: bool = True) -> RunDir:
    """Run MSPLR on ``cfg.data.target``; returns the run folder."""
    _, _, device = D.init(cfg.device)
    run, cfg = RunDir.prepare(cfg, resume=resume)
    seed_everything(cfg.seed)
    target = load_dataset(cfg, "target")
    gt = ground_truth(target.train)
    loop = ProgressiveRun(cfg, run, device, "msplr", verbose=verbose)
    model = loop.start(target, resume=resume)
    s = loop.state

    while not (s.step_done and loop.should_stop()):
        t_step = time.perf_counter()
        if s.step_done:  # a new step: pseudo-labels first
            s.step += 1
            s.step_done, s.trainer = False, None
            feats = loop.target_features(model, target, normalize=False)
            result = None
            if D.is_main():
                kwargs = pseudo_label_kwargs(cfg)
                if cfg.pseudo.auto_eps and cfg.pseudo.method == "dbscan":
                    kwargs["eps"], _, reason = auto_eps(
                        feats.feats, feats.camids, **sweep_kwargs(kwargs)
                    )
                    log.info("step %d auto eps: %s", s.step, reason.split(";")[0])
                result = make_pseudo_labels(feats.feats, feats.camids, true_pids=gt, **kwargs)
            result = D.broadcast_object(result)
            crash_point("cluster")
            s.labels = result.labels
            if cfg.loss.rtl_weight > 0:  # PAST's RTL mixed in: D_R of these features
                from .past import rtl_ranking_state

                s.extra["rtl_ranked"] = rtl_ranking_state(feats, cfg)
            record = {"kind": "labels", "step": s.step, **result.stats}
            if cfg.pseudo.method == "dbscan":
                record["eps"] = result.params["eps"]
            record.update({f"quality_{k}": v for k, v in (result.quality or {}).items()})
            run.log_metrics(record)
            log.info("step %d pseudo-labels: %s", s.step, _fmt_stats(result.stats, result.quality))
            loop.save(model)

        samples = pseudo_samples(target.train, s.labels)
        num_classes = int(s.labels.max()) + 1
        if num_classes < 1:
            raise TrainingError(f"step {s.step}: no pseudo-label cluster to train on")
        if model.num_classes != num_classes or s.trainer is None:
            model.reset_classifier(num_classes)
        criterion = build_reid_loss(cfg.loss, num_classes, model.feat_dim).to(device)
        optimizer, scheduler = optimizer_from_cfg(cfg, model)
        center_opt = criterion.center_optimizer(cfg.loss.center_lr)
        loader = train_loader(cfg, samples)
        if cfg.loss.rtl_weight > 0:  # + w L_RTL, with RTL triplets in the batches
            from .past import mix_rtl

            rtl = (target.train, s.labels, s.extra["rtl_ranked"], cfg.seed * 1000 + s.step)
            criterion, loader = mix_rtl(cfg, criterion, *rtl)
        trainer = Trainer(
            model,
            criterion,
            optimizer,
            loader,
            device=device,
            scheduler=scheduler,
            extra_optimizers=[center_opt] if center_opt else [],
            freeze_epochs=cfg.train.freeze_epochs,
            amp=cfg.train.amp,
            channels_last=cfg.train.channels_last,
            iters_per_epoch=cfg.train.iters_per_epoch,
            seed=cfg.seed * 1000 + s.step,
            desc=f"step {s.step}",
            verbose=verbose,
        )
        if s.trainer is not None:  # resuming inside this step
            trainer.load_state_dict({**s.trainer, "model": model.state_dict()})
        for epoch in range(trainer.epoch + 1, cfg.adapt.epochs_per_step + 1):
            stats = trainer.train_epoch(epoch)
            s.trainer = {k: v for k, v in trainer.state_dict().items() if k != "model"}
            run.log_metrics({"kind": "epoch", "step": s.step, "epoch": epoch, **stats})
            loop.save(model)

        loop.finish_step(model, target, t_step)
    finish_run(cfg, run, target, device, stage="msplr", verbose=verbose)
    D.barrier()
    return run


def _fmt_stats(stats: dict, quality: dict | None) -> str:
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


__all__ = ["adapt_msplr", "pseudo_label_kwargs", "sweep_kwargs"]
