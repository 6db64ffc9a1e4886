"""What ``amp: auto`` picks on this machine, and the probe's timings (issue 16).

    flock /tmp/adaptreid-heavy.lock .venv/bin/python benchmarks/precision_probe.py

MobileNetV2 + BNNeck (random weights: the probe times shapes, not values) at ``--height`` x
``--width``, one fresh cache per mode (training step, extraction forward), so the probe runs
even where ``~/.cache/adaptreid/precision.json`` already answers. Prints the machine key the
cache would use and each mode's choice with its fp32 and bf16 + channels_last timings.

    flock /tmp/adaptreid-heavy.lock .venv/bin/python benchmarks/precision_probe.py --aa 20

``--aa N`` measures the probe's own noise instead (issue 27): N probes of fp32 against a second
fp32 copy of the same model (an A/A test), each of ``--rounds`` interleaved rounds of the
probe's steps, and prints the spread of the per-round and per-probe (median) ratios. A probe
whose margin lies inside that spread can answer either way on one machine; the default margin
of ``amp: auto`` is set outside it. Results go to ``benchmarks/results/precision_probe_aa.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from adaptreid.models.build import build_model
from adaptreid.runtime import precision as P
from adaptreid.runtime.precision import ProbeSettings, machine_id, resolve_precision

OUT = Path(__file__).resolve().parent / "results" / "precision_probe_aa.json"


def _quantile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q * (len(v) - 1))))]


def aa_test(model, size, mode: str, probes: int, rounds: int, steps: int) -> dict:
    """fp32 against fp32: per-round and per-probe median ratios of two copies' step times."""
    batch = 32 if mode == "train" else 64
    cpu = torch.device("cpu")
    per_round, per_probe = [], []
    for _ in range(probes):
        a = P._ProbeTimer(model, size, cpu, mode, batch, steps)
        b = P._ProbeTimer(model, size, cpu, mode, batch, steps)
        ratios = []
        for _ in range(rounds):
            ta = a(dict(P._FP32))
            tb = b(dict(P._FP32))
            ratios.append(tb / ta)
        per_round += ratios
        per_probe.append(statistics.median(ratios))
    return {
        "mode": mode,
        "batch": batch,
        "probes": probes,
        "rounds": rounds,
        "steps": steps,
        "round_ratio_min": min(per_round),
        "round_ratio_p05": _quantile(per_round, 0.05),
        "round_ratio_p95": _quantile(per_round, 0.95),
        "round_ratio_max": max(per_round),
        "probe_median_min": min(per_probe),
        "probe_median_max": max(per_probe),
        "per_probe": [round(r, 4) for r in per_probe],
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--num-classes", type=int, default=751)
    ap.add_argument("--aa", type=int, default=0, help="A/A test: this many fp32-vs-fp32 probes")
    ap.add_argument("--rounds", type=int, default=3, help="with --aa: rounds per probe")
    args = ap.parse_args(argv)
    model = build_model(args.backbone, num_classes=args.num_classes, pretrained=None)
    cpu = torch.device("cpu")
    print(machine_id(cpu))
    if args.aa:
        steps = ProbeSettings().steps
        rows = []
        for mode in ("train", "extract"):
            row = aa_test(model, (args.height, args.width), mode, args.aa, args.rounds, steps)
            rows.append(row)
            print(
                f"{mode}: round ratio {row['round_ratio_min']:.3f}..{row['round_ratio_max']:.3f} "
                f"(5-95%: {row['round_ratio_p05']:.3f}..{row['round_ratio_p95']:.3f}); "
                f"probe median {row['probe_median_min']:.3f}..{row['probe_median_max']:.3f}"
            )
        OUT.write_text(
            json.dumps(
                {
                    "machine": machine_id(cpu),
                    "date": datetime.date.today().isoformat(),
                    "command": "python benchmarks/precision_probe.py " + " ".join(sys.argv[1:]),
                    "torch": torch.__version__,
                    "input": f"{args.height}x{args.width}",
                    "results": rows,
                },
                indent=1,
            )
            + "\n"
        )
        return
    for mode in ("train", "extract"):
        with tempfile.TemporaryDirectory() as d:
            amp, channels_last, reason = resolve_precision(
                "auto",
                model,
                (args.height, args.width),
                cpu,
                mode=mode,
                probe=ProbeSettings(cache_dir=d),
            )
        print(f"{mode}: amp={amp} channels_last={channels_last}  {reason}")


if __name__ == "__main__":
    main()
