"""Supervised training on the labelled source domain: the baseline of both papers.

Recipe (MSPLR section 3.6.1): ImageNet-initialised backbone, BNNeck, P x K batches,
``L = L_tri + L_ID + 0.005 L_c`` (eq. 5), Adam with the warm-up schedule of eq. 6 for 90
epochs, random erasing + colour change + flip, with the pad + random crop of the
bag-of-tricks baseline the paper builds on (its reference [21]). Evaluated in-domain on the
source's query/gallery every ``train.eval_every`` epochs and at the end on the target's
query/gallery when ``data.target`` is set (direct transfer). ``best.pt`` is the model after
the last epoch (``train.keep: last``, the paper's) or the evaluated epoch with the best
source-test mAP (``train.keep: best``).
"""

from __future__ import annotations

import logging
import time

from ..config import Config
from ..data.datasets import relabel
from ..errors import ConfigError
from ..losses.reid_loss import build_reid_loss
from ..rundir.run import RunDir
from ..runtime import distributed as D
from .builders import (
    bad_images_mode,
    evaluate_on,
    finish_run,
    format_metrics,
    image_cache_dir,
    load_dataset,
    log_precision,
    model_from_cfg,
    open_image_cache,
    optimizer_from_cfg,
    remove_run_image_cache,
    run_precision,
    seed_everything,
    train_loader,
)
from .trainer import Stage, Trainer, TrainSettings

log = logging.getLogger("adaptreid")


def train_source(cfg: Config, *, resume: bool = False, verbose: bool = True) -> RunDir:
    """Train on ``cfg.data.source``; returns the run folder (``checkpoints/best.pt``)."""
    if cfg.train.keep not in ("last", "best"):
        raise ConfigError(f"train.keep must be 'last' or 'best', got {cfg.train.keep!r}")
    _, _, device = D.init(cfg.device)
    run, cfg = RunDir.prepare(cfg, resume=resume)
    seed_everything(cfg.seed)
    source = load_dataset(cfg, "source")
    train, pid_map = relabel(source.train)
    num_classes = len(pid_map)
    log.info("source %s: %d images, %d identities", source.name, len(train), num_classes)

    model = model_from_cfg(cfg, num_classes)
    prec = run_precision(cfg, model, device)
    amp, channels_last = prec["train"]["amp"], prec["train"]["channels_last"]
    ev_amp, ev_cl = prec["extract"]["amp"], prec["extract"]["channels_last"]
    mode = bad_images_mode(cfg, "source")
    note_bad = run.note_bad  # data.bad_images: skip
    cache_dir = image_cache_dir(cfg, run.path)

    criterion = build_reid_loss(cfg.loss, num_classes, model.feat_dim).to(device)
    optimizer, scheduler = optimizer_from_cfg(cfg, model)
    center_opt = criterion.center_optimizer(cfg.loss.center_lr)
    stage = Stage(
        criterion,
        optimizer,
        train_loader(
            cfg,
            train,
            bad_images=mode,
            image_cache=open_image_cache(cache_dir, cfg.data.height, cfg.data.width),
        ),
        epochs=cfg.train.epochs,
        scheduler=scheduler,
        extra_optimizers=[center_opt] if center_opt else [],
        freeze_epochs=cfg.train.freeze_epochs,
    )
    settings = TrainSettings(
        amp=amp,
        channels_last=channels_last,
        iters_per_epoch=cfg.train.iters_per_epoch,
        seed=cfg.seed,
        verbose=verbose,
    )
    trainer = Trainer(
        model,
        stage,
        settings,
        device=device,
        on_bad_images=lambda items: note_bad(items, f"training epoch {trainer.epoch + 1}"),
    )
    # evaluation
    precision = {
        "amp": ev_amp,
        "channels_last": ev_cl,
        "bad_images": mode,
        "image_cache_dir": cache_dir,
    }
    best = -1.0
    if resume and run.has_checkpoint():
        state = run.load_last()
        trainer.load_state_dict({**state["trainer"], "model": state["model"]})
        run.restore(state)
        best = float(state.get("best_map", -1.0))
        log.info("resumed %s at epoch %d", run.path, trainer.epoch)
    log_precision(run, prec)  # after restore's cut

    has_test = bool(source.query and source.gallery)
    for epoch in range(trainer.epoch + 1, cfg.train.epochs + 1):
        t0 = time.perf_counter()
        stats = trainer.train_epoch(epoch)
        record = {"kind": "epoch", "stage": "source", "epoch": epoch, **stats}
        last = epoch == cfg.train.epochs
        due = cfg.train.eval_every and epoch % cfg.train.eval_every == 0
        is_best = False
        if has_test and (due or last):
            metrics = evaluate_on(
                cfg,
                model,
                source,
                device,
                verbose=verbose,
                on_bad=lambda items: note_bad(items, "source evaluation"),
                **precision,
            )
            record.update({f"source_{k}": v for k, v in metrics.items()})
            if metrics["mAP"] > best:
                best, is_best = metrics["mAP"], cfg.train.keep == "best"
        if last and cfg.train.keep == "last" or last and not has_test:
            is_best = True
        record["time_s"] = time.perf_counter() - t0
        run.log_metrics(record)  # before the checkpoint, which counts it (a resume keeps it)
        if epoch % max(cfg.train.checkpoint_every, 1) == 0 or last or is_best:
            trainer_state = {k: v for k, v in trainer.state_dict().items() if k != "model"}
            run.save_state(
                model, cfg, best=is_best, epoch=epoch, best_map=best, trainer=trainer_state
            )
        log.info(
            "epoch %d/%d loss %.4f %s%.1f img/s",
            epoch,
            cfg.train.epochs,
            stats["loss"],
            f"mAP {record['source_mAP']:.4f} " if "source_mAP" in record else "",
            stats["images_per_s"],
        )

    if cfg.data.target:  # every rank: evaluate_on computes on rank 0 and broadcasts
        from ..rundir.model_io import model_from_checkpoint

        target = load_dataset(cfg, "target")
        best_model, _ = model_from_checkpoint(run.best if run.best.is_file() else run.last)
        metrics = evaluate_on(
            cfg,
            best_model.to(device),
            target,
            device,
            verbose=verbose,
            amp=ev_amp,
            channels_last=ev_cl,
            bad_images=bad_images_mode(cfg, "target"),
            image_cache_dir=cache_dir,
            on_bad=lambda items: note_bad(items, "direct-transfer evaluation"),
        )
        run.log_metrics(
            {"kind": "final", "stage": "direct_transfer", "dataset": target.name, **metrics}
        )
        log.info("direct transfer to %s: %s", target.name, format_metrics(metrics))
    finish_run(
        cfg,
        run,
        source if has_test else None,
        device,
        stage="source",
        verbose=verbose,
        on_bad=lambda items: note_bad(items, "final evaluation"),
        **precision,
    )
    D.barrier()
    remove_run_image_cache(cfg, run.path)
    return run
