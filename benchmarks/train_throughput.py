"""Training throughput (images/s) of one optimisation step: fp32 versus bf16 autocast with
channels_last, side by side in one process, median of several timed repeats.

    python benchmarks/train_throughput.py --backbone mobilenet_v2 --height 256 --width 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from adaptreid.losses.reid_loss import ReidLoss
from adaptreid.models import build_model
from adaptreid.runtime.device import autocast
from adaptreid.runtime.precision import cpu_model


def step_time(model, crit, opt, x, y, *, amp: str, steps: int) -> float:
    dev = torch.device("cpu")
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        with autocast(dev, amp):
            out = model(x)
        out = {k: v.float() if torch.is_tensor(v) else v for k, v in out.items()}
        loss, _ = crit(out, {"pid": y})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.height, args.width)
    y = torch.arange(args.batch) // 4
    results = {}
    configs = [("fp32", "none", False), ("bf16+channels_last", "bf16", True)]
    models = {}
    for name, amp, cl in configs:
        m = build_model(args.backbone, num_classes=args.batch // 4)
        crit = ReidLoss(args.batch // 4, m.feat_dim)
        if cl:
            m = m.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(list(m.parameters()) + list(crit.parameters()), lr=1e-4)
        models[name] = (m, crit, opt, amp, cl)
        xi = x.contiguous(memory_format=torch.channels_last) if cl else x
        step_time(m, crit, opt, xi, y, amp=amp, steps=1)  # warm-up
    times = {name: [] for name, _, _ in configs}
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        for name, (m, crit, opt, amp, cl) in models.items():
            xi = x.contiguous(memory_format=torch.channels_last) if cl else x
            times[name].append(step_time(m, crit, opt, xi, y, amp=amp, steps=args.steps))
    for name, ts in times.items():
        med = statistics.median(ts)
        results[name] = {"median_step_s": med, "images_per_s": args.batch / med, "runs": ts}
    base = results["fp32"]["images_per_s"]
    print(
        f"{args.backbone} {args.height}x{args.width} batch {args.batch}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {cpu_model()}"
    )
    for name, r in results.items():
        print(
            f"  {name:20s} {r['images_per_s']:7.1f} img/s  (median of {args.repeats} x "
            f"{args.steps} steps; x{r['images_per_s'] / base:.2f} vs fp32)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
