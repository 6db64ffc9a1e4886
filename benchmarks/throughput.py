"""Training and extraction throughput on real Market-1501 images (issue 16): the project's
Trainer with its real P x K loader against the bare optimisation step, and
``extract_features`` with the real test loader against a bare forward pass, each in fp32 and
in bf16 + channels_last, side by side in one process (interleaved repeats, medians).

Setup: the Market-1501 CPU source preset (``configs/source/market1501_mobilenet_cpu.yaml``):
MobileNetV2 + BNNeck, 128x64, P x K = 16 x 4, triplet + label-smoothed CE + centre loss, Adam,
``data.num_workers`` loader workers (2), on ``bounding_box_train`` of
``../shared/data/market1501``. Measurements, in images per second:

* ``bare step``: forward + loss + backward + optimiser steps on one fixed batch of real,
  augmented images already in memory (what the hardware can do);
* ``trainer (in memory)``: ``Trainer.train_epoch`` over that same batch held in memory
  (``--iters`` times): the Trainer's own overhead, without data loading;
* ``trainer``: ``Trainer.train_epoch`` with the real loader (JPEG decoding and augmentation
  in the workers), ``--iters`` batches per epoch; its own ``images_per_s`` (the epoch's wall
  time, including the start of the loader workers: the preset's loader re-creates them every
  epoch so that a resumed run draws the same augmentations; that start is also measured
  alone, as the time to the first batch of a fresh iterator);
* ``loader only``: the same loader iterated with no model (what the workers can deliver
  while nothing else runs);
* ``bare forward``: eval-mode forward passes on a fixed batch of ``test_batch_size`` images;
* ``extract``: ``extract_features`` over ``--extract-images`` images with the real test
  loader (``build_test_loader``, the test transform, ``data.num_workers`` persistent workers,
  started by an untimed first pass);
* ``test loader only``: that loader iterated with no model.

    flock /tmp/adaptreid-heavy.lock .venv/bin/python benchmarks/throughput.py

Writes ``benchmarks/results/throughput.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from kreciprocal import machine  # noqa: E402

RESULTS = HERE / "results" / "throughput.json"
VARIANTS = [("fp32", "none", False), ("bf16+channels_last", "bf16", True)]


def _builders():
    """The project's config-to-object helpers (``engine.builders``; ``methods.common`` in
    older trees)."""
    try:
        from adaptreid.engine import builders as b
    except ImportError:  # pragma: no cover - older layout
        from adaptreid.methods import common as b
    return b


def _bare_steps(model, crit, opts, batch, amp, channels_last, steps) -> float:
    from adaptreid.runtime.device import autocast

    dev = torch.device("cpu")
    x = batch["img"]
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        with autocast(dev, amp):
            out = model(x)
        out = {k: v.float() if torch.is_tensor(v) else v for k, v in out.items()}
        loss, _ = crit(out, batch)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()
    return steps * x.shape[0] / (time.perf_counter() - t0)


@torch.no_grad()
def _bare_forward(model, x, amp, channels_last, reps) -> float:
    from adaptreid.runtime.device import autocast

    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    model.eval()
    t0 = time.perf_counter()
    for _ in range(reps):
        with autocast(torch.device("cpu"), amp):
            model(x).float()
    return reps * x.shape[0] / (time.perf_counter() - t0)


def _first_batch_s(loader) -> float:
    """Seconds to the first batch of a fresh iterator (worker start + one batch)."""
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    seconds = time.perf_counter() - t0
    del it
    gc.collect()
    return seconds


def _settle() -> None:
    """Let the workers of an abandoned iterator exit before the next measurement."""
    gc.collect()
    time.sleep(1.0)


def _loader_only(loader, batches: int) -> float:
    n, t0 = 0, time.perf_counter()
    for i, b in enumerate(loader):
        if i >= batches:
            break
        n += b["img"].shape[0]
    return n / (time.perf_counter() - t0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="source/market1501_mobilenet_cpu.yaml")
    ap.add_argument("--root", default=None, help="Market-1501 root (default: the preset's)")
    ap.add_argument("--iters", type=int, default=100, help="batches per Trainer epoch")
    ap.add_argument("--bare-steps", type=int, default=10)
    ap.add_argument("--extract-images", type=int, default=2560)
    ap.add_argument("--forward-reps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--variants",
        nargs="+",
        choices=[name for name, _, _ in VARIANTS],
        default=[name for name, _, _ in VARIANTS],
        help="measure only these (fp32 always builds the shared batch and loaders)",
    )
    args = ap.parse_args(argv)
    variants = [v for v in VARIANTS if v[0] in args.variants or v[0] == "fp32"]

    from adaptreid.config import load_config
    from adaptreid.data.datasets import relabel
    from adaptreid.data.loaders import build_test_loader
    from adaptreid.data.transforms import build_transforms
    from adaptreid.engine.extract import extract_features
    from adaptreid.engine.trainer import Stage, Trainer, TrainSettings
    from adaptreid.losses.reid_loss import build_reid_loss
    from adaptreid.runtime.precision import Precision

    b = _builders()
    cfg = load_config(args.config, [f"data.source_root={args.root}"] if args.root else [])
    b.seed_everything(0)
    dataset = b.load_dataset(cfg, "source")
    train, pids = relabel(dataset.train)
    d = cfg.data
    print(
        f"{len(train)} training images, {len(pids)} ids, {d.height}x{d.width}, "
        f"batch {d.batch_size}, {d.num_workers} workers, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )

    def new_setup(amp, cl):
        torch.manual_seed(0)
        model = b.model_from_cfg(cfg, len(pids))
        crit = build_reid_loss(cfg.loss, len(pids), model.feat_dim)
        opt, sched = b.optimizer_from_cfg(cfg, model)
        center_opt = crit.center_optimizer(cfg.loss.center_lr)
        loader = b.train_loader(cfg, train)
        settings = TrainSettings(amp=amp, channels_last=cl, verbose=False)
        trainer = Trainer(
            model,
            Stage(crit, opt, loader, epochs=1, extra_optimizers=[center_opt]),
            settings,
            device=torch.device("cpu"),
            iters_per_epoch=args.iters,
        )
        mem = Trainer(
            model,
            Stage(crit, opt, [], epochs=1, extra_optimizers=[center_opt]),  # batch set below
            settings,
            device=torch.device("cpu"),
        )
        return {
            "model": model,
            "crit": crit,
            "opts": [opt, center_opt],
            "trainer": trainer,
            "trainer_mem": mem,
        }

    setups = {name: new_setup(amp, cl) for name, amp, cl in variants}
    # one fixed batch of real augmented training images, and one of test images
    batch = next(iter(setups["fp32"]["trainer"].loader))
    batch = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    test_tf = build_transforms(d.height, d.width, train=False)
    test_samples = dataset.train[: args.extract_images]
    test_loader = build_test_loader(test_samples, test_tf, d.test_batch_size, d.num_workers)
    fwd_x = next(iter(build_test_loader(test_samples, test_tf, d.test_batch_size, 0)))["img"]

    for name, amp, cl in variants:  # warm-up (first-call allocations, kernel selection)
        s = setups[name]
        s["trainer_mem"].loader = [batch] * args.iters
        _bare_steps(s["model"], s["crit"], s["opts"], batch, amp, cl, 1)
        _bare_forward(s["model"], fwd_x, amp, cl, 1)
    extract_features(setups["fp32"]["model"], test_loader, verbose=False)  # start the workers
    res: dict[str, dict[str, list[float]]] = {name: {} for name, _, _ in variants}
    loader_rates, test_loader_rates, first_batch = [], [], []
    for epoch in range(1, args.repeats + 1):  # interleaved: all variants see the same load
        for name, amp, cl in variants:
            s = setups[name]
            rate = _bare_steps(s["model"], s["crit"], s["opts"], batch, amp, cl, args.bare_steps)
            res[name].setdefault("bare_step", []).append(rate)
            stats = s["trainer_mem"].train_epoch(epoch)
            res[name].setdefault("trainer_in_memory", []).append(stats["images_per_s"])
            t0 = time.perf_counter()
            stats = s["trainer"].train_epoch(epoch)
            wall = time.perf_counter() - t0
            res[name].setdefault("trainer", []).append(stats["images_per_s"])
            res[name].setdefault("trainer_wall", []).append(args.iters * d.batch_size / wall)
            _settle()
            res[name].setdefault("bare_forward", []).append(
                _bare_forward(s["model"], fwd_x, amp, cl, args.forward_reps)
            )
            t0 = time.perf_counter()
            feats = extract_features(
                s["model"], test_loader, precision=Precision(amp, cl), verbose=False
            )
            res[name].setdefault("extract", []).append(
                len(feats.feats) / (time.perf_counter() - t0)
            )
            print(name, {k: round(v[-1], 1) for k, v in res[name].items()}, flush=True)
        loader_rates.append(_loader_only(setups["fp32"]["trainer"].loader, args.iters))
        _settle()
        first_batch.append(_first_batch_s(setups["fp32"]["trainer"].loader))
        _settle()
        test_loader_rates.append(_loader_only(test_loader, 10**9))
        print(
            "loader only",
            round(loader_rates[-1], 1),
            round(test_loader_rates[-1], 1),
            "first batch",
            round(first_batch[-1], 2),
        )

    out = {
        "machine": machine(),
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "command": " ".join(["python"] + sys.argv),
        "load_avg_at_start": os.getloadavg(),
        "setup": {
            "config": args.config,
            "images": len(train),
            "input": f"{d.height}x{d.width}",
            "batch": d.batch_size,
            "test_batch": d.test_batch_size,
            "workers": d.num_workers,
            "trainer_iters": args.iters,
            "extract_images": len(test_samples),
            "repeats": args.repeats,
        },
        "loader_only_img_s": statistics.median(loader_rates),
        "test_loader_only_img_s": statistics.median(test_loader_rates),
        "train_loader_first_batch_s": statistics.median(first_batch),
        "variants": {
            name: {k: {"median": statistics.median(v), "all": v} for k, v in m.items()}
            for name, m in res.items()
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(markdown(out))


def markdown(o: dict) -> str:
    lines = [
        "| variant | bare step | Trainer, in-memory batch | Trainer, real loader | "
        "Trainer / bare | bare forward | extract_features | extract / bare |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in o["variants"].items():
        bs, tm, tr = (m[k]["median"] for k in ("bare_step", "trainer_in_memory", "trainer"))
        bf, ex = m["bare_forward"]["median"], m["extract"]["median"]
        lines.append(
            f"| {name} | {bs:.1f} | {tm:.1f} | {tr:.1f} | {100 * tr / bs:.0f}% | {bf:.1f} | "
            f"{ex:.1f} | {100 * ex / bf:.0f}% |"
        )
    lines.append(
        f"\nloader only (train, {o['setup']['workers']} workers): "
        f"{o['loader_only_img_s']:.1f} img/s, first batch of a fresh iterator "
        f"{o['train_loader_first_batch_s']:.2f} s; test loader only: "
        f"{o['test_loader_only_img_s']:.1f} img/s"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
