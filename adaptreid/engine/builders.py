"""Parts built from a config that source training and the adaptation loop share: seeding,
datasets, loaders, model, optimiser and schedule, evaluation rounds, the end of a run."""

from __future__ import annotations

import logging
import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..data.datasets import ReidDataset, Sample, open_dataset
from ..data.image_cache import ImageCache
from ..data.loaders import PKSampling, build_train_loader
from ..data.transforms import Augmentation, build_transforms
from ..errors import CheckpointError, ConfigError
from ..models import HeadSettings, ReidModel, build_model
from ..runtime import distributed as D
from .evaluator import EvalSettings, evaluate_model
from .optim import OptimizerSettings, WarmupMultiStepLR, build_optimizer

log = logging.getLogger("adaptreid")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_dataset(cfg: Config, role: str) -> ReidDataset:
    """The ``role`` ("source" or "target") dataset of ``cfg.data``: its name, ``*_root``,
    ``*_options`` (extra arguments of the dataset's factory) and ``allow_absolute_paths``."""
    d = cfg.data
    name, root = getattr(d, role), getattr(d, f"{role}_root")
    if not name:
        raise ConfigError(f"data.{role} is empty: name a dataset (adaptreid data list)")
    if name.lower() in ("manifest", "csv") and not str(root).strip():
        raise ConfigError(
            f"data.{role}_root is empty: give the folder that holds your manifest.csv, or the "
            f".csv file itself (data.{role}_root=path/to/folder; README 'Bring your own dataset')"
        )
    return open_dataset(
        name,
        root,
        allow_absolute_paths=d.allow_absolute_paths,
        options=getattr(d, f"{role}_options"),
        field=f"data.{role}_options",
    )


def train_transform(cfg: Config):
    """The training augmentation of ``cfg.data`` (flip, pad-crop, erasing, colour change)."""
    d = cfg.data
    return build_transforms(d.height, d.width, train=True, augmentation=Augmentation.from_config(d))


def identities_per_batch(cfg: Config, num_ids: int) -> int:
    """P of the P x K batches: ``batch_size // num_instances``, lowered with a warning when
    there are fewer (pseudo-)identities (small target, early step) rather than a stop."""
    p = max(1, cfg.data.batch_size // cfg.data.num_instances)
    if 0 < num_ids < p:
        log.warning(
            "only %d (pseudo-)identities for P=%d identities per batch: using P=%d",
            num_ids,
            p,
            num_ids,
        )
        p = num_ids
    return p


def bad_images_mode(cfg: Config, role: str) -> str:
    """``data.bad_images`` for the ``role`` dataset: ``error`` | ``skip``; ``auto`` is skip for
    the unlabelled target of an adaptation and error for a labelled source."""
    mode = cfg.data.bad_images
    if mode not in ("auto", "error", "skip"):
        raise ConfigError(f"data.bad_images must be auto, error or skip, got {mode!r}")
    if mode == "auto":
        return "skip" if role == "target" else "error"
    return mode


#: the image cache's folder in a run folder when ``data.image_cache_dir`` is empty
RUN_IMAGE_CACHE = "image_cache"


def image_cache_dir(cfg: Config, run_path: str | Path) -> str:
    """The folder of a run's image cache: ``data.image_cache_dir``, or ``image_cache/`` in
    the run folder when it is empty; ``""`` (no cache) with ``data.image_cache: none``."""
    d = cfg.data
    if d.image_cache == "none":
        return ""
    return (
        str(Path(d.image_cache_dir).expanduser())
        if d.image_cache_dir
        else str(Path(run_path) / RUN_IMAGE_CACHE)
    )


def open_image_cache(folder: str, height: int, width: int) -> ImageCache | None:
    """The :class:`ImageCache` of ``folder`` at ``height x width`` (None for ``""``)."""
    return ImageCache(folder, height, width) if folder else None


def remove_run_image_cache(cfg: Config, run_path: str | Path) -> None:
    """At the end of a run (rank 0, after the last barrier): remove the run folder's own
    image cache (``data.image_cache_dir`` empty). A folder the user named is kept."""
    if cfg.data.image_cache == "disk" and not cfg.data.image_cache_dir and D.is_main():
        shutil.rmtree(Path(run_path) / RUN_IMAGE_CACHE, ignore_errors=True)


def train_loader(
    cfg: Config,
    samples: Sequence[Sample],
    *,
    bad_images: str = "error",
    image_cache: ImageCache | None = None,
):
    """A P x K loader over ``samples`` (pids already in [0, C)) with the configured
    augmentation; ``bad_images="skip"`` drops unreadable images from their batch;
    ``image_cache``: images decoded and resized once (the augmentation still runs at every
    draw)."""
    d = cfg.data
    tf = train_transform(cfg)
    p = identities_per_batch(cfg, len({s.pid for s in samples if s.pid >= 0}))
    return build_train_loader(
        list(samples),
        tf,
        PKSampling(p, d.num_instances, seed=cfg.seed, rank=D.rank(), world_size=D.world_size()),
        num_workers=d.num_workers,
        bad_images=bad_images,
        image_cache=image_cache,
    )


def model_from_cfg(cfg: Config, num_classes: int) -> ReidModel:
    """The network of ``cfg.model``; a ``model.pretrained`` file that is missing is an error
    that names the key and the file (a preset never starts from random weights silently)."""
    m = cfg.model
    if m.pretrained and not str(m.pretrained).startswith(("http://", "https://", "imagenet")):
        from pathlib import Path

        p = Path(m.pretrained).expanduser()
        if not p.is_file() and str(m.pretrained).lower() not in _known_weight_names():
            raise CheckpointError(
                f"model.pretrained: the ImageNet weights of {m.backbone!r} are expected at "
                f"{p} ({p.resolve()}), and there is no such file. Put the file there, or pass "
                "model.pretrained=PATH (torchvision / official key layout), or "
                "model.pretrained=null to start from random weights on purpose"
            )
    return build_model(
        m.backbone,
        num_classes=num_classes,
        last_stride=m.last_stride,
        pretrained=m.pretrained,
        head=HeadSettings.from_config(m),
        partial_weights=m.allow_partial_weights,
    )


def _known_weight_names() -> set[str]:
    from ..models.weights import KNOWN_URLS

    return {k.lower() for k in KNOWN_URLS}


def optimizer_from_cfg(
    cfg: Config, model: ReidModel, *, lr: float | None = None, schedule: bool = True
):
    """Adam / SGD with the body at ``lr`` and the head at ``lr * head_lr_mult``, plus the
    warm-up multi-step schedule (MSPLR eq. 6 by default; ``schedule=False``: none, the
    learning rates stay constant). Returns ``(optimizer, scheduler or None)``."""
    o = cfg.optim
    base = o.lr if lr is None else lr
    groups = [
        {"params": list(model.body_parameters()), "lr": base, "name": "body"},
        {"params": list(model.head_parameters()), "lr": base * o.head_lr_mult, "name": "head"},
    ]
    opt = build_optimizer(groups, OptimizerSettings.from_config(o, lr=base))
    if not schedule:
        return opt, None
    sched = WarmupMultiStepLR(
        opt,
        milestones=o.milestones,
        gamma=o.gamma,
        warmup_factor=o.warmup_factor,
        warmup_epochs=o.warmup_epochs,
    )
    return opt, sched


def choose_precision(
    cfg: Config, model: ReidModel, device, *, mode: str = "train"
) -> tuple[str, bool, str]:
    """``(amp, channels_last, reason)`` for this run's training (``mode="train"``) or feature
    extraction and evaluation (``mode="extract"``): ``train.amp`` / ``train.channels_last``
    as given, or with ``train.amp: auto`` the faster of fp32 and bf16 + channels_last on this
    machine for this network and input size (:func:`adaptreid.runtime.precision.
    resolve_precision`, a probe per mode, cached per machine); ``reason`` is one line for the
    log and the run's ``precision`` record (the report shows it)."""
    t = cfg.train
    if t.amp != "auto":
        return t.amp, t.channels_last, f"amp={t.amp}, channels_last={t.channels_last} (as set)"
    from ..runtime.precision import resolve_precision

    amp, channels_last, reason = resolve_precision(
        "auto", model, (cfg.data.height, cfg.data.width), device, mode=mode
    )
    log.info("precision (%s): %s", mode, reason)
    return amp, channels_last, reason


def resolve_precision_cfg(
    cfg: Config, model: ReidModel, device, *, mode: str = "train"
) -> tuple[str, bool]:
    """:func:`choose_precision` without the reason."""
    return choose_precision(cfg, model, device, mode=mode)[:2]


def choose_compile(
    cfg: Config, model: ReidModel, device, precision: tuple[str, bool, str], *, mode: str
) -> tuple[bool, str]:
    """``(compile, reason)``: ``train.compile`` for this mode, probed in the mode's chosen
    ``precision`` (a :func:`choose_precision` answer) with ``auto``
    (:func:`adaptreid.runtime.compile.resolve_compile`); the choice is logged."""
    if cfg.train.compile == "never":
        return False, "compile=never (as set)"
    from ..runtime.compile import resolve_compile
    from ..runtime.precision import Precision

    out, reason = resolve_compile(
        cfg.train.compile,
        model,
        (cfg.data.height, cfg.data.width),
        device,
        mode=mode,
        precision=Precision(precision[0], bool(precision[1])),
    )
    log.info("compile (%s): %s", mode, reason)
    return out, reason


def run_precision(cfg: Config, model: ReidModel, device) -> dict[str, Any]:
    """Precision and compilation of a run, both modes (:func:`choose_precision`,
    :func:`choose_compile`), applied to ``model`` (its backbone compiled where chosen), as
    the run's ``precision`` record (metrics.jsonl; the report shows it):
    ``{"kind": "precision", "train": {amp, channels_last, reason, compile, compile_reason},
    "extract": {...}}``."""
    record: dict[str, Any] = {"kind": "precision"}
    for mode in ("train", "extract"):
        amp, channels_last, reason = choice = choose_precision(cfg, model, device, mode=mode)
        compiled, why = choose_compile(cfg, model, device, choice, mode=mode)
        record[mode] = {
            "amp": amp,
            "channels_last": bool(channels_last),
            "reason": reason,
            "compile": compiled,
            "compile_reason": why,
        }
    if hasattr(model, "set_compiled"):
        model.set_compiled(train=record["train"]["compile"], extract=record["extract"]["compile"])
    return record


def log_precision(run_dir, record: dict[str, Any]) -> bool:
    """Append the run's ``precision`` record (:func:`run_precision`) to ``run_dir``'s
    metrics unless the run's last one made the same choices (amp, channels_last, compile in
    both modes): a resume on the same machine adds nothing, so a killed and resumed run
    keeps the records of an uninterrupted one; a resume that chose otherwise (another
    machine, a cleared cache) is recorded where it happened. True where it was appended."""

    def choices(r: dict[str, Any]) -> list:
        return [
            [r.get(m, {}).get(k) for k in ("amp", "channels_last", "compile")]
            for m in ("train", "extract")
        ]

    earlier = [r for r in run_dir.read_metrics() if r.get("kind") == "precision"]
    if earlier and choices(earlier[-1]) == choices(record):
        return False
    run_dir.log_metrics(record)
    return True


def evaluate_cfg(
    cfg: Config,
    model: ReidModel,
    dataset: ReidDataset,
    device,
    *,
    verbose: bool = True,
    on_bad: Callable[[list], Any] | None = None,
    **changes: Any,
):
    """:func:`~adaptreid.engine.evaluator.evaluate_model` (every setting explicit) with the
    run's settings (:meth:`EvalSettings.from_config`: input size, loader, ``eval.*``) and
    ``changes`` of them: ``amp`` / ``channels_last`` (the run's resolved ones; by default
    ``train.*``'s, probed), ``bad_images``, ``image_cache_dir`` (the run's,
    :func:`image_cache_dir`; by default none). With ``bad_images="skip"`` unreadable query /
    gallery images are left out and handed to ``on_bad`` as ``(index, path, reason)``
    items."""
    if changes.get("amp") is None:
        changes["amp"], changes["channels_last"] = resolve_precision_cfg(
            cfg, model, device, mode="extract"
        )
    changes["channels_last"] = bool(changes.get("channels_last"))
    settings = EvalSettings.from_config(cfg, **changes)
    out = evaluate_model(model, dataset, settings, device=device, verbose=verbose)
    if on_bad is not None:
        items = [x for split in out.dropped.values() for x in split]
        if items:
            on_bad(items)
    return out


def format_metrics(m: dict) -> str:
    """``rank1 0.7712 rank5 ... mAP ... mINP ...`` for the log."""
    return " ".join(f"{k} {m[k]:.4f}" for k in ("rank1", "rank5", "mAP", "mINP") if k in m)


def evaluate_on(
    cfg: Config, model: ReidModel, dataset: ReidDataset, device, *, per_query: bool = False, **kw
) -> dict[str, Any]:
    """CMC / mAP / mINP of ``model`` on ``dataset``'s query/gallery: :func:`evaluate_cfg` on
    rank 0 only, the metrics broadcast so every rank takes the same decisions (what training
    and adaptation call). ``kw``: of :func:`evaluate_cfg`. With ``per_query``, the dict also
    holds ``"per_query"``: ``{"ap": [...], "pid": [...]}``, each evaluated query's AP (None
    for a skipped one) and identity, in query order, for
    :func:`~adaptreid.evaluation.map_interval` and its paired form."""
    metrics = None
    if D.is_main():
        out = evaluate_cfg(cfg, model, dataset, device, **kw)
        metrics = out.metrics()
        if per_query:
            metrics["per_query"] = per_query_record(out.result.ap, out.query.pids)
    return D.broadcast_object(metrics)


def per_query_record(ap: np.ndarray, pids: np.ndarray) -> dict[str, list]:
    """``{"ap": [...], "pid": [...]}`` as plain JSON: APs rounded to 5 decimals (None where
    the query was skipped), identities as ints."""
    return {
        "ap": [None if np.isnan(x) else round(float(x), 5) for x in np.asarray(ap)],
        "pid": [int(x) for x in np.asarray(pids)],
    }


def finish_run(
    cfg: Config,
    run,
    dataset: ReidDataset | None,
    device,
    *,
    stage: str,
    verbose: bool = True,
    on_bad: Callable[[list], Any] | None = None,
    **changes: Any,
) -> None:
    """After training: evaluate ``best.pt`` on ``dataset``'s query/gallery (if any), draw the
    rank-list picture, log a ``final`` record and write the report. Rank 0 only.
    ``changes``: of the evaluation settings, as in :func:`evaluate_cfg`."""
    from ..evaluation import top_k_matches
    from ..report.report import draw_ranklist, write_report
    from ..rundir.model_io import model_from_checkpoint

    if not D.is_main():
        return
    if dataset is not None and dataset.query and dataset.gallery:
        ckpt = run.best if run.best.is_file() else run.last
        model, _ = model_from_checkpoint(ckpt)
        out = evaluate_cfg(
            cfg,
            model.to(device),
            dataset,
            device,
            verbose=verbose,
            on_bad=on_bad,
            **changes,
        )
        run.log_metrics({"kind": "final", "stage": stage, "dataset": dataset.name, **out.metrics()})
        q = [dataset.query[i] for i in out.query.kept]  # rows of distmat: the readable images
        g = [dataset.gallery[i] for i in out.gallery.kept]
        picks = np.linspace(0, len(q) - 1, num=min(8, len(q))).round().astype(int)
        idx, match = top_k_matches(
            out.distmat[picks],
            out.query.pids[picks],
            out.gallery.pids,
            out.query.camids[picks],
            out.gallery.camids,
            k=10,
        )
        draw_ranklist(
            [q[i].path for i in picks], [s.path for s in g], idx, match, run.path / "ranklist.png"
        )
    write_report(run.path)
