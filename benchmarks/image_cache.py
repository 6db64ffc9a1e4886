"""Feature extraction with and without the decoded-image cache (issue 27 item 1), on real
DukeMTMC-reID images: the time of one ``extract_features`` pass over the dev half's query +
gallery (9,579 images; ``--limit N``: the first N) with a fresh test loader per pass, as the
engine builds one per extraction / evaluation.

Setup: the MobileNetV2 + BNNeck source model of ``../shared/checkpoints/
source_market1501_mobilenet_cpu.pt`` (``--synthetic``: the same network with random weights,
the same cost), 128x64 input, the CPU presets' test batch (128) and loader workers (2), fp32
(``--precisions fp32 bf16`` adds bf16 + channels_last). Per round, in an order that rotates between
rounds so that no variant always runs first:

* ``none``: ``data.image_cache=none``: every pass decodes the JPEGs (the OS keeps the files
  in its page cache after the first round, as in a run);
* ``cold``: a new, empty cache folder: the pass decodes and writes every row (a run's first
  extraction);
* ``warm``: the same folder again: every row read back (every later extraction / evaluation);
* ``decode_none`` / ``decode_warm``: the same loaders iterated with no model (what the data
  side costs alone);
* ``bare_forward``: eval-mode forward passes over one batch held in memory, as many images as
  a pass (what the model alone costs).

Medians over ``--rounds`` rounds (default 3). Writes ``benchmarks/results/image_cache.json``
and prints a table: seconds per pass, images per second, each pass's share of the bare
forward's speed (``forward_share``: bare forward time / pass time) and ``none / warm``.

    flock /tmp/adaptreid-heavy.lock .venv/bin/python benchmarks/image_cache.py

About 5 minutes on 2 EPYC cores; ``--limit 2000 --rounds 2 --precisions fp32`` in about 1.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]  # this checkout's adaptreid, whatever is installed
from kreciprocal import machine  # noqa: E402

RESULTS = HERE / "results" / "image_cache.json"
#: ../shared next to the checkout (or next to the folder of worktrees that holds it)
SHARED = next(
    (p for p in (ROOT.parent / "shared", ROOT.parent.parent / "shared") if p.is_dir()),
    ROOT.parent / "shared",
)
PRECISIONS = {"fp32": ("none", False), "bf16": ("bf16", True)}


def _settle() -> None:
    """Let the workers of the last loader exit before the next measurement."""
    gc.collect()
    time.sleep(0.5)


@torch.no_grad()
def _bare_forward(model, x, amp, channels_last, images: int) -> float:
    from adaptreid.runtime.device import autocast

    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    model.eval()
    reps = max(1, round(images / x.shape[0]))
    t0 = time.perf_counter()
    for _ in range(reps):
        with autocast(torch.device("cpu"), amp):
            model(x).float()
    return (time.perf_counter() - t0) * images / (reps * x.shape[0])


def _decode_only(loader) -> float:
    t0 = time.perf_counter()
    n = sum(len(b["index"]) for b in loader)
    assert n > 0
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=SHARED / "data" / "dukemtmc")
    ap.add_argument(
        "--checkpoint",
        type=Path,
        default=SHARED / "checkpoints" / "source_market1501_mobilenet_cpu.pt",
    )
    ap.add_argument("--synthetic", action="store_true", help="random MobileNetV2 weights")
    ap.add_argument("--limit", type=int, default=0, help="the first N query + gallery images")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--precisions",
        nargs="+",
        choices=list(PRECISIONS),
        default=["fp32"],
        help="bf16: bf16 + channels_last, where the CPU has fast bf16 (not Zen 3)",
    )
    ap.add_argument("--cache-dir", type=Path, default=None, help="default: a temporary folder")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    from adaptreid.data import ImageCache, build_test_loader, build_transforms
    from adaptreid.data.datasets import open_dataset
    from adaptreid.engine.extract import extract_features
    from adaptreid.models import build_model
    from adaptreid.runtime.precision import Precision

    t_start = time.perf_counter()
    load_avg = os.getloadavg()
    dataset = open_dataset("dukemtmc", str(args.root))
    samples = list(dataset.query) + list(dataset.gallery)
    if args.limit:
        samples = samples[: args.limit]
    n = len(samples)
    if args.synthetic or not args.checkpoint.is_file():
        torch.manual_seed(0)
        model = build_model("mobilenet_v2", num_classes=702, last_stride=1)
        weights = "random (synthetic)"
    else:
        from adaptreid.rundir.model_io import model_from_checkpoint

        model, _ = model_from_checkpoint(args.checkpoint)
        weights = f"../shared/checkpoints/{args.checkpoint.name}"
    model.eval()
    h, w = args.height, args.width
    tf = build_transforms(h, w, train=False)
    base = args.cache_dir or Path(tempfile.mkdtemp(prefix="adaptreid-image-cache-"))
    folder = base / "image_cache"
    print(
        f"{n} images (dukemtmc query + gallery), {h}x{w}, batch {args.batch_size}, "
        f"{args.workers} workers, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"weights {weights}, cache {folder}",
        flush=True,
    )

    def loader(cache):
        return build_test_loader(
            samples, tf, args.batch_size, args.workers, bad_images="error", image_cache=cache
        )

    def extract(cache, prec) -> tuple[float, torch.Tensor]:
        amp, cl = PRECISIONS[prec]
        t0 = time.perf_counter()
        f = extract_features(model, loader(cache), precision=Precision(amp, cl), verbose=False)
        return time.perf_counter() - t0, f.feats

    x = next(iter(build_test_loader(samples, tf, args.batch_size, 0)))["img"]
    for prec in args.precisions:  # warm-up: allocations, kernels, the OS file cache
        _bare_forward(model, x, *PRECISIONS[prec], x.shape[0])
    _decode_only(loader(None))
    _settle()

    times: dict[str, list[float]] = {}
    same = True
    for r in range(args.rounds):
        order = list(args.precisions)
        order = order[r % len(order) :] + order[: r % len(order)]
        for prec in order:
            amp, cl = PRECISIONS[prec]
            times.setdefault(f"{prec}/bare_forward", []).append(_bare_forward(model, x, amp, cl, n))
            # none first on even rounds, last on odd ones (cold and warm keep their order)
            shutil.rmtree(folder, ignore_errors=True)
            steps = ["none", "cold", "warm"] if r % 2 == 0 else ["cold", "warm", "none"]
            feats = {}
            for step in steps:
                cache = None if step == "none" else ImageCache(folder, h, w)
                _settle()
                seconds, feats[step] = extract(cache, prec)
                times.setdefault(f"{prec}/{step}", []).append(seconds)
            same &= all(torch.equal(feats["none"], feats[k]) for k in ("cold", "warm"))
        _settle()
        times.setdefault("decode_none", []).append(_decode_only(loader(None)))
        _settle()
        times.setdefault("decode_warm", []).append(_decode_only(loader(ImageCache(folder, h, w))))
        print(f"round {r + 1}:", {k: round(v[-1], 2) for k, v in times.items()}, flush=True)
    cache_bytes = sum(p.stat().st_size for p in folder.iterdir())
    shutil.rmtree(folder, ignore_errors=True)
    if args.cache_dir is None:
        shutil.rmtree(base, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    passes = {}
    for prec in args.precisions:
        fwd = med[f"{prec}/bare_forward"]
        row = {"bare_forward_s": round(fwd, 2), "bare_forward_img_s": round(n / fwd, 1)}
        for step in ("none", "cold", "warm"):
            s = med[f"{prec}/{step}"]
            row[f"{step}_s"] = round(s, 2)
            row[f"{step}_img_s"] = round(n / s, 1)
            row[f"{step}_forward_share"] = round(fwd / s, 3)
        row["speedup_none_over_warm"] = round(med[f"{prec}/none"] / med[f"{prec}/warm"], 3)
        row["cold_over_none"] = round(med[f"{prec}/cold"] / med[f"{prec}/none"], 3)
        passes[prec] = row
    out = {
        "machine": machine(),
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "command": " ".join(["python", *sys.argv]),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "load_avg_at_start": load_avg,
        "setup": {
            "dataset": "dukemtmc dev half: query + gallery",
            "images": n,
            "input": f"{h}x{w}",
            "batch": args.batch_size,
            "workers": args.workers,
            "weights": weights,
            "rounds": args.rounds,
            "cache_bytes": cache_bytes,
        },
        "features_equal": bool(same),
        "decode_only": {
            "none_s": round(med["decode_none"], 2),
            "warm_s": round(med["decode_warm"], 2),
            "none_img_s": round(n / med["decode_none"], 1),
            "warm_img_s": round(n / med["decode_warm"], 1),
            "ratio_none_over_warm": round(med["decode_none"] / med["decode_warm"], 2),
        },
        "passes": passes,
        "all": {k: [round(t, 3) for t in v] for k, v in times.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")

    print(f"\n{n} images, {h}x{w}, {args.workers} workers; median of {args.rounds} rounds (s)")
    print("| precision | bare forward | none | cold | warm | warm share of bare | none / warm |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for prec, row in passes.items():
        print(
            f"| {prec} | {row['bare_forward_s']} | {row['none_s']} "
            f"({row['none_forward_share']:.0%}) | {row['cold_s']} | {row['warm_s']} | "
            f"{row['warm_forward_share']:.0%} | {row['speedup_none_over_warm']:.2f}x |"
        )
    d = out["decode_only"]
    print(f"decoding only: {d['none_s']} s without the cache, {d['warm_s']} s from it")
    print(f"features equal with and without the cache: {same}; wall {out['wall_s']} s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
