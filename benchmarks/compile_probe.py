"""``torch.compile`` (inductor, CPU) against eager for the training step and the extraction
forward of the CPU presets' network (issue 27).

    flock /tmp/adaptreid-heavy.lock .venv/bin/python benchmarks/compile_probe.py

MobileNetV2 + BNNeck (751 classes, random weights: time depends on shapes) at 128 x 64, in the
precision ``amp: auto`` chose on this machine (``--amp`` to force one). Per mode: the compile
time (the first compiled call, which traces and builds the kernels), then ``--rounds``
interleaved rounds of ``--steps`` steps, eager then compiled, and the medians; the training
step's loss of both on the same batch and weights (they must agree to float tolerance).
Writes ``benchmarks/results/compile_probe.json``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from adaptreid.models.build import build_model
from adaptreid.runtime.device import autocast
from adaptreid.runtime.precision import machine_id, resolve_precision

OUT = Path(__file__).resolve().parent / "results" / "compile_probe.json"
CPU = torch.device("cpu")


def _train_step(model, opt, x, y, amp):
    with autocast(CPU, amp):
        out = model(x)
    loss = torch.nn.functional.cross_entropy(out["logits"].float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss)


def _extract(model, x, amp):
    with torch.no_grad(), autocast(CPU, amp):
        return model(x)


def measure(mode: str, base, size, amp: str, cl: bool, steps: int, rounds: int) -> dict:
    batch = 64 if mode == "train" else 128
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, *size, generator=gen)
    y = torch.randint(0, 751, (batch,), generator=gen)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    nets = {}
    for name in ("eager", "compiled"):
        m = copy.deepcopy(base)
        if cl:
            m = m.to(memory_format=torch.channels_last)
        m.train(mode == "train")
        opt = torch.optim.SGD(m.parameters(), lr=0.0) if mode == "train" else None
        nets[name] = (m if name == "eager" else torch.compile(m), opt)

    def run(name):
        net, opt = nets[name]
        if mode == "train":
            return _train_step(net, opt, x, y, amp)
        return _extract(net, x, amp)

    t0 = time.perf_counter()
    first_c = run("compiled")
    compile_s = time.perf_counter() - t0
    first_e = run("eager")
    agree = None
    if mode == "train":  # lr 0: weights unchanged, so both see the same model
        agree = abs(first_c - first_e)
    else:
        agree = float((first_c.float() - first_e.float()).abs().max())
    times = {"eager": [], "compiled": []}
    for _ in range(rounds):
        for name in ("eager", "compiled"):
            t0 = time.perf_counter()
            for _ in range(steps):
                run(name)
            times[name].append((time.perf_counter() - t0) / steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "mode": mode,
        "batch": batch,
        "amp": amp,
        "channels_last": cl,
        "compile_s": round(compile_s, 1),
        "eager_step_s": round(med["eager"], 4),
        "compiled_step_s": round(med["compiled"], 4),
        "ratio": round(med["compiled"] / med["eager"], 3),
        "abs_diff": agree,
        "rounds": rounds,
        "steps": steps,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--amp", default="auto", choices=["auto", "none", "bf16"])
    ap.add_argument("--modes", nargs="+", default=["extract", "train"])
    ap.add_argument("--out", type=Path, default=OUT, help=f"default: {OUT.name} in results/")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    base = build_model("mobilenet_v2", num_classes=751, pretrained=None)
    size = (args.height, args.width)
    rows = []
    for mode in args.modes:
        amp, cl, _ = resolve_precision(args.amp, base, size, "cpu", mode=mode)
        row = measure(mode, base, size, amp, cl, args.steps, args.rounds)
        rows.append(row)
        print(
            f"{mode}: {amp}{' + channels_last' if cl else ''}, compile {row['compile_s']} s; "
            f"eager {row['eager_step_s'] * 1e3:.0f} ms, compiled {row['compiled_step_s'] * 1e3:.0f}"
            f" ms (ratio {row['ratio']}); |difference| {row['abs_diff']:.2e}",
            flush=True,
        )
    args.out.write_text(
        json.dumps(
            {
                "machine": machine_id("cpu"),
                "date": datetime.date.today().isoformat(),
                "command": "python benchmarks/compile_probe.py " + " ".join(sys.argv[1:]),
                "torch": torch.__version__,
                "input": f"{args.height}x{args.width}",
                "results": rows,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
