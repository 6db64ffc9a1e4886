"""Tables of adaptation results from run folders (for BENCHMARKS.md). Nothing is typed by
hand: every figure comes from the folders' ``metrics.jsonl`` and ``wall_time.json``.

    python benchmarks/uda_tables.py table1 --supervised runs/source_dukemtmc_mobilenet_cpu \\
        MSPLR=runs/msplr_market1501_to_dukemtmc_cpu PAST=runs/past_market1501_to_dukemtmc_cpu
    python benchmarks/uda_tables.py steps runs/msplr_market1501_to_dukemtmc_cpu
    python benchmarks/uda_tables.py select runs/msplr_* runs/past_*
    python benchmarks/uda_tables.py seeds runs/msplr_market1501_to_dukemtmc_cpu runs/msplr_m2d_seed*

``table1``: MSPLR Table 1's layout: supervised on the target (the in-domain evaluation of the
source run trained on the target), direct transfer (step 0), then for each method the model
``adapt.select`` picked (label-free by default) and the oracle's (best target test mAP), with
rank-1/5/10, mAP, the share of the direct-transfer -> supervised mAP gap closed, and wall
time. ``steps``: one row per step (pseudo-labels: eps, clusters, portion kept, pairwise
precision / recall / F1 and NMI against the hidden train identities; the label-free scores of
the step's model; target mAP; time). ``select``: what each selection rule picks and how far
its mAP is from the oracle's. ``seeds``: each run's picked and oracle mAP, then min / median /
max; ``--recorded "seed 0=57.0"`` adds a run whose folder is gone by its recorded mAP.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adaptreid.report.report import gap_text, pick_step  # noqa: E402
from adaptreid.rundir.run import start_of  # noqa: E402

RULES = ("agreement", "snd", "cross_camera", "last")


def records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        committed = Path(__file__).resolve().parent / "results" / "uda_runs" / run.name
        hint = f" (the committed record: {committed})" if committed.is_dir() else ""
        raise SystemExit(f"{path}: no such file; give a run folder{hint}")
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def config(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def invocations(run: Path) -> list[dict]:
    """The run's wall_time.json entries (one per invocation); none when it has no such file."""
    path = run / "wall_time.json"
    return json.loads(path.read_text()) if path.is_file() else []


def wall(run: Path) -> str:
    entries = invocations(run)
    if not entries:
        return "-"
    return f"{sum(e['seconds'] for e in entries) / 60:.0f} min"


#: AMD's CPU family / model numbers as wall_time.json records them (family 25 = 19h holds both
#: Zen 3 and Zen 4, told apart by model; 26 = 1Ah is Zen 5)
_ZEN4_MODELS = set(range(0x10, 0x20)) | set(range(0x60, 0x80)) | set(range(0xA0, 0xB0))


def cpu_name(recorded: str) -> str:
    """A short name for a recorded machine: 'AMD EPYC [family 25 model 1]' -> 'Zen 3',
    'NVIDIA H200 (lent device, ...)' -> 'NVIDIA H200'; anything else as recorded."""
    m = re.search(r"family (\d+) model (\d+)", recorded)
    if recorded.startswith("AMD") and m:
        family, model = int(m.group(1)), int(m.group(2))
        if family == 26:
            return "Zen 5"
        if family == 25:
            return "Zen 4" if model in _ZEN4_MODELS else "Zen 3"
    return recorded.split(" (")[0].strip()


def machine(run: Path) -> str:
    """The machines a run's invocations ran on (wall_time.json), '-' where none is recorded."""
    names = dict.fromkeys(cpu_name(e["machine"]) for e in invocations(run) if e.get("machine"))
    return " + ".join(names) or "-"


def steps_of(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in records(run) if r.get("kind") == "step" and "mAP" in r}


def supervised(run: Path) -> dict:
    """The source run's in-domain evaluation of its best.pt (the 'final' record); for a run
    that ended before writing it (source_market1501_pcb_cpu, 2026-12-07: its closing step
    failed), the last epoch's evaluation of the same model (``train.keep: last``)."""
    recs = records(run)
    final = [r for r in recs if r.get("kind") == "final" and r.get("stage") == "source"]
    if final:
        return final[-1]
    evaluated = [r for r in recs if r.get("kind") == "epoch" and "source_mAP" in r]
    if not evaluated:
        raise SystemExit(f"{run}: no source evaluation in its metrics.jsonl")
    return {k[len("source_") :]: v for k, v in evaluated[-1].items() if k.startswith("source_")}


def metrics_row(
    name: str, m: dict, lo: float | None, hi: float | None, extra: str, where: str = "-"
) -> str:
    gap = "-"
    if lo is not None and hi is not None and hi > lo:
        gap = f"{100 * (m['mAP'] - lo) / (hi - lo):.0f}%"
    return (
        f"| {name} | {pct(m.get('rank1'))} | {pct(m.get('rank5'))} | {pct(m.get('rank10'))} | "
        f"{pct(m['mAP'])} | {gap} | {extra} | {where} |"
    )


def direct_transfer(run: Path) -> dict:
    """A source run's evaluation of its best.pt on the other dataset (its 'final' record)."""
    recs = records(run)
    final = [r for r in recs if r.get("kind") == "final" and r.get("stage") == "direct_transfer"]
    if not final:
        raise SystemExit(f"{run}: no 'final' direct_transfer record in metrics.jsonl")
    return final[-1]


def table1(
    sup: Path | None,
    runs: list[tuple[str, Path]],
    other_sup: list[tuple[str, Path]] = (),
    other_direct: list[tuple[str, Path]] = (),
) -> list[str]:
    """``other_sup`` / ``other_direct``: (label, source run) of another network family (the
    PCB source models), their supervised-on-the-target and direct-transfer rows beside the
    first family's; the gap closed stays measured on the first family's two rows."""
    out = [
        "| method | rank-1 | rank-5 | rank-10 | mAP | gap closed | step (of) / wall time "
        "| machine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    hi = supervised(sup)["mAP"] if sup else None
    first = steps_of(runs[0][1])
    lo = first[0]["mAP"]
    if sup:
        sup_row = supervised(sup)
        out.append(
            metrics_row("supervised on the target", sup_row, lo, hi, wall(sup), machine(sup))
        )
    start = start_of(config(runs[0][1]) or {})  # no source model: issue 26 item 3
    out.append(metrics_row(f"{start} (no adaptation)", first[0], lo, hi, "-", machine(runs[0][1])))
    for label, run in other_sup:
        out.append(
            metrics_row(
                f"{label}, supervised on the target",
                supervised(run),
                lo,
                hi,
                wall(run),
                machine(run),
            )
        )
    for label, run in other_direct:
        dt = direct_transfer(run)
        out.append(metrics_row(f"{label}, direct transfer", dt, lo, hi, "-", machine(run)))
    for label, run in runs:
        steps = steps_of(run)
        rule = config(run).get("adapt", {}).get("select", "last")
        pick, oracle = pick_step(records(run), rule), pick_step(records(run), "target_map")
        n = max(steps)
        out.append(
            metrics_row(
                f"{label}, label-free pick ({rule})",
                steps[pick],
                lo,
                hi,
                f"step {pick} of {n} / {wall(run)}",
                machine(run),
            )
        )
        out.append(
            metrics_row(
                f"{label}, oracle: best target test mAP",
                steps[oracle],
                lo,
                hi,
                f"step {oracle} of {n}",
                machine(run),
            )
        )
    return out


def step_table(run: Path) -> list[str]:
    recs = records(run)
    labels = {r["step"]: r for r in recs if r.get("kind") == "labels" and not r.get("probe")}
    probe = {r["step"]: r for r in recs if r.get("kind") == "labels" and r.get("probe")}
    select = {r["step"]: r for r in recs if r.get("kind") == "select"}
    out = [
        "| step | eps | clusters | portion kept | precision | recall | F1 | NMI | agreement "
        "| SND | cross-cam | rank-1 | mAP | step time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f3(v):
        return "-" if v is None or v != v else f"{v:.3f}"

    for s, r in sorted(steps_of(run).items()):
        lab, sel = labels.get(s, {}), select.get(s, {})
        eps = lab.get("eps")
        out.append(
            f"| {s} | {'-' if eps is None else f'{eps:.3f}'} | {lab.get('num_clusters', '-')} | "
            f"{pct(lab.get('portion_kept'))} | {pct(lab.get('quality_precision'))} | "
            f"{pct(lab.get('quality_recall'))} | {pct(lab.get('quality_f1'))} | "
            f"{pct(lab.get('quality_nmi'))} | {f3(sel.get('agreement'))} | "
            f"{f3(sel.get('snd'))} | {f3(sel.get('cross_camera'))} | {pct(r.get('rank1'))} | "
            f"{pct(r['mAP'])} | {r.get('time_s', 0) / 60:.1f} min |"
        )
    for s, lab in sorted(probe.items()):
        eps = lab.get("eps")
        out.append(
            f"| ({s}: probe of step {s - 1}'s model) | "
            f"{'-' if eps is None else f'{eps:.3f}'} | "
            f"{lab.get('num_clusters', '-')} | {pct(lab.get('portion_kept'))} | "
            f"{pct(lab.get('quality_precision'))} | {pct(lab.get('quality_recall'))} | "
            f"{pct(lab.get('quality_f1'))} | {pct(lab.get('quality_nmi'))} | | | | | | |"
        )
    return out


def select_table(runs: list[tuple[str, Path]]) -> list[str]:
    out = [
        "| run | oracle: step / mAP | "
        + " | ".join(f"{r}: step / mAP / gap" for r in RULES)
        + " |",
        "|---|---|" + "---|" * len(RULES),
    ]
    for label, run in runs:
        recs, steps = records(run), steps_of(run)
        o = pick_step(recs, "target_map")
        cells = []
        for rule in RULES:
            p = pick_step(recs, rule)
            if p is None:
                cells.append("-")
                continue
            cells.append(f"{p} / {pct(steps[p]['mAP'])} / {gap_text(recs, p, o)}")
        out.append(f"| {label} | {o} / {pct(steps[o]['mAP'])} | " + " | ".join(cells) + " |")
    return out


def seeds_table(
    runs: list[tuple[str, Path]], recorded: list[tuple[str, float, float]] = ()
) -> list[str]:
    """One row per run (``recorded``: a run whose folder is gone, as its label, label-free
    pick mAP and oracle mAP, in %), then min / median / max / spread of both columns."""
    picked, oracle = [], []
    out = ["| run | label-free pick: step / mAP | oracle: step / mAP |", "|---|---|---|"]
    for label, run in runs:
        recs, steps = records(run), steps_of(run)
        rule = config(run).get("adapt", {}).get("select", "last")
        p, o = pick_step(recs, rule), pick_step(recs, "target_map")
        picked.append(steps[p]["mAP"])
        oracle.append(steps[o]["mAP"])
        out.append(f"| {label} | {p} / {pct(picked[-1])} | {o} / {pct(oracle[-1])} |")
    for label, p_map, o_map in recorded:
        picked.append(p_map / 100)
        oracle.append(o_map / 100)
        out.append(f"| {label} (recorded) | {p_map:.1f} | {o_map:.1f} |")
    out += ["", "| model | seeds | min | median | max | spread |", "|---|---|---|---|---|---|"]
    for name, v in (("label-free pick", picked), ("oracle", oracle)):
        out.append(
            f"| {name} | {len(v)} | {pct(min(v))} | {pct(statistics.median(v))} | "
            f"{pct(max(v))} | {100 * (max(v) - min(v)):.1f} |"
        )
    return out


def _runs(items: list[str]) -> list[tuple[str, Path]]:
    out = []
    for item in items:
        label, _, folder = item.rpartition("=")
        out.append((label or Path(folder).name, Path(folder)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("table", choices=["table1", "steps", "select", "seeds"])
    p.add_argument("runs", nargs="+", help="run folders, or LABEL=FOLDER")
    p.add_argument("--supervised", type=Path, help="table1: the source run trained on the target")
    p.add_argument(
        "--other-supervised",
        action="append",
        default=[],
        metavar="LABEL=FOLDER",
        help="table1: another family's source run trained on the target (e.g. the PCB one)",
    )
    p.add_argument(
        "--other-direct",
        action="append",
        default=[],
        metavar="LABEL=FOLDER",
        help="table1: another family's source run, its direct transfer to the target",
    )
    p.add_argument(
        "--recorded",
        action="append",
        default=[],
        metavar="LABEL=PICKED[/ORACLE]",
        help="seeds: a run whose folder is gone, by its recorded mAP (%%)",
    )
    args = p.parse_args()
    runs = _runs(args.runs)
    if args.table == "table1":
        lines = table1(
            args.supervised, runs, _runs(args.other_supervised), _runs(args.other_direct)
        )
    elif args.table == "steps":
        lines = []
        for label, run in runs:
            lines += [f"{label}:", "", *step_table(run), ""]
    elif args.table == "select":
        lines = select_table(runs)
    else:
        recorded = []
        for item in args.recorded:
            label, _, value = item.rpartition("=")
            p_map, _, o_map = value.partition("/")
            recorded.append((label, float(p_map), float(o_map or p_map)))
        lines = seeds_table(runs, recorded)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
