"""Tables of adaptation results from run folders (for BENCHMARKS.md).

    python benchmarks/uda_tables.py runs/msplr_market1501_to_pku_cpu runs/abl_m2p_1step ...

For each run folder: the direct-transfer row (step 0), the best step's row, the time spent in
the steps (sum of the step records' ``time_s``; the process wall time adds start-up, step 0 and
the report), and with ``--steps`` one row per step with its pseudo-label statistics and quality
(pairwise precision / F1 and NMI against the target's true identities: analysis only).
Nothing is typed by hand: every figure comes from the folders' ``metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def summary_row(run: Path, label: str | None = None) -> str:
    recs = records(run)
    steps = [r for r in recs if r.get("kind") == "step" and "mAP" in r]
    best = max((r for r in steps if r["step"] > 0), key=lambda r: r["mAP"], default=steps[0])
    spent = sum(r.get("time_s", 0.0) for r in steps if r["step"] > 0)
    n = max(r["step"] for r in steps)
    return (
        f"| {label or run.name} | {pct(best['rank1'])} | {pct(best.get('rank5'))} | "
        f"{pct(best['mAP'])} | {pct(best.get('mINP'))} | {best['step']} of {n} | "
        f"{spent / 60:.1f} min |"
    )


def direct_row(run: Path) -> str:
    d = next(r for r in records(run) if r.get("kind") == "step" and r["step"] == 0)
    return (
        f"| direct transfer | {pct(d['rank1'])} | {pct(d.get('rank5'))} | {pct(d['mAP'])} | "
        f"{pct(d.get('mINP'))} | - | - |"
    )


def step_rows(run: Path) -> list[str]:
    recs = records(run)
    labels = {r["step"]: r for r in recs if r.get("kind") == "labels"}
    out = [
        "| step | clusters | portion kept | eps | precision | F1 | NMI | rank-1 | mAP |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in recs if r.get("kind") == "step"):
        lab = labels.get(r["step"], {})
        eps = lab.get("eps")
        out.append(
            f"| {r['step']} | {lab.get('num_clusters', '-')} | {pct(lab.get('portion_kept'))} | "
            f"{'-' if eps is None else f'{eps:.3f}'} | {pct(lab.get('quality_precision'))} | "
            f"{pct(lab.get('quality_f1'))} | {pct(lab.get('quality_nmi'))} | "
            f"{pct(r.get('rank1'))} | {pct(r.get('mAP'))} |"
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders, or LABEL=FOLDER")
    p.add_argument("--steps", action="store_true", help="also one table of steps per run")
    args = p.parse_args()
    parsed = []
    for item in args.runs:
        label, _, folder = str(item).rpartition("=")
        parsed.append((label or None, Path(folder)))
    print("| method | rank-1 | rank-5 | mAP | mINP | best step | time in steps |")
    print("|---|---|---|---|---|---|---|")
    print(direct_row(parsed[0][1]))
    for label, run in parsed:
        print(summary_row(run, label))
    if args.steps:
        for label, run in parsed:
            print(f"\n{label or run.name}:\n")
            print("\n".join(step_rows(run)))


if __name__ == "__main__":
    main()
