"""Run reports: plots and a ``report.md`` built from a run folder's ``metrics.jsonl``.

``write_report(run_dir)`` can be called at any time (``adaptreid report RUN_DIR``): it only
reads the folder. Pictures: ``steps.png`` (target metrics and pseudo-label statistics per
adaptation step, the MSPLR paper's Figure 2), ``loss.png`` (training loss per epoch), and
``ranklist.png`` when the run saved one (query + top-10 gallery, green = same identity).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from ..evaluation import MapInterval, ap_from_record, map_difference_interval  # noqa: E402
from ..rundir.run import RunDir, start_of  # noqa: E402

METRICS = ("rank1", "rank5", "rank10", "mAP", "mINP")
#: what each ``adapt.select`` rule is called in reports
RULE_NAMES = {
    "agreement": "label-free: agreement of consecutive pseudo-labels",
    "holdout": "label-free: retrieval on held-back step-1 clusters",
    "snd": "label-free: soft neighbourhood density",
    "cross_camera": "label-free: cross-camera neighbours",
    "last": "the last step",
    "target_map": "ORACLE: best target test mAP (uses the target's test labels)",
}


def pick_step(records: Sequence[dict], rule: str, patience: int = 0) -> int | None:
    """The step whose model ``adapt.select = rule`` chooses, from a run's records: the
    same choice the loop made (first best in step order); None when nothing qualifies.
    ``target_map`` is the oracle (target test labels). ``patience`` > 0 replays
    ``adapt.patience`` on a run made without it: the steps after the one where that many
    adapted models in a row did not beat the best are not looked at (as the loop, ``last``
    ignores it)."""
    steps = [r for r in records if r.get("kind") == "step"]
    if rule == "last":
        return max((r["step"] for r in steps), default=None)
    if rule == "target_map":
        scored = [(r["step"], r["mAP"]) for r in steps if "mAP" in r]
    else:
        scored = [
            (r["step"], r[rule])
            for r in records
            if r.get("kind") == "select" and isinstance(r.get(rule), int | float)
        ]
    best, value, stale = None, -np.inf, 0
    for step, v in sorted(scored, key=lambda t: t[0]):
        if np.isfinite(v) and v > value:
            best, value, stale = step, v, 0
        else:
            stale += step > 0
            if 0 < patience <= stale:
                break
    return best


def selection_rows(records: Sequence[dict], rule: str) -> list[tuple[str, int, dict]]:
    """``[(title, step, step record)]``: the pick of ``rule`` first, then the oracle's
    (best target test mAP) when the run has target test metrics and ``rule`` is not it."""
    by_step = {r["step"]: r for r in records if r.get("kind") == "step"}
    out = []
    pick = pick_step(records, rule)
    if pick is not None and pick in by_step:
        out.append((f"adapted, step {pick} ({RULE_NAMES.get(rule, rule)})", pick, by_step[pick]))
    oracle = pick_step(records, "target_map")
    if rule != "target_map" and oracle is not None:
        out.append(
            (f"adapted, step {oracle} ({RULE_NAMES['target_map']})", oracle, by_step[oracle])
        )
    return out


def step_difference(
    records: Sequence[dict], step_a: int, step_b: int, **kw: Any
) -> MapInterval | None:
    """``mAP(step_a) - mAP(step_b)`` with its paired bootstrap interval over the test
    identities (:func:`~adaptreid.evaluation.map_difference_interval`; ``kw``: its
    ``n_boot`` / ``level`` / ``seed``), from the run's ``per_query`` records; None when either
    step has none (runs made before they were recorded) or their query lists differ."""
    per = {r["step"]: r for r in records if r.get("kind") == "per_query"}  # last one wins
    if step_a not in per or step_b not in per or per[step_a]["pid"] != per[step_b]["pid"]:
        return None

    return map_difference_interval(
        ap_from_record(per[step_a]["ap"]),
        ap_from_record(per[step_b]["ap"]),
        np.asarray(per[step_a]["pid"]),
        **kw,
    )


def gap_text(records: Sequence[dict], step: int, oracle: int) -> str:
    """``-1.3`` (step's mAP minus the oracle step's, in points) and, when the run has
    per-query records, the 90% interval over the test identities: ``-1.3 [-2.9, +0.2]``."""
    by_step = {r["step"]: r for r in records if r.get("kind") == "step" and "mAP" in r}
    text = f"{100 * (by_step[step]['mAP'] - by_step[oracle]['mAP']):+.1f}"
    d = None if step == oracle else step_difference(records, step, oracle)
    return text if d is None else f"{text} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"


def _difference_lines(
    records: Sequence[dict], rule: str, start: str = "direct transfer"
) -> list[str]:
    """How far the kept step stands from the oracle's and from step 0 (the direct transfer,
    or the starting weights: ``start``), with the interval the test identities allow
    (per-query records; nothing without them)."""
    pick, oracle = pick_step(records, rule), pick_step(records, "target_map")
    if pick is None or oracle is None:
        return []
    lines = []
    zero = "the direct transfer," if start == "direct transfer" else "the starting model,"
    for other, name in ((oracle, "the oracle's"), (0, zero)):
        if other == pick:
            continue
        d = step_difference(records, pick, other)
        if d is None:
            continue
        verdict = (
            "the test identities cannot tell the two apart at that level"
            if d.contains(0.0)
            else "the difference holds at that level"
        )
        lines.append(
            f"- step {pick} (kept) minus {name} step {other}: {100 * d.value:+.1f} mAP; "
            f"{100 * d.level:.0f}% interval [{100 * d.low:+.1f}, {100 * d.high:+.1f}] when the "
            f"{d.num_identities} test identities are resampled: {verdict}"
        )
    return lines + [""] if lines else []


def _stop_lines(records: Sequence[dict]) -> list[str]:
    """The header line of a run that ``adapt.patience`` stopped early (its ``stop`` record)."""
    stop = next((r for r in records if r.get("kind") == "stop"), None)
    if stop is None:
        return []
    return [
        f"- **stopped early** after step {stop['step']} of at most {stop['max_steps']}: "
        f"{stop['stale']} step(s) in a row without a better `{stop['rule']}` score "
        f"(adapt.patience {stop['patience']}); best.pt is step {stop['best_step']}'s model"
    ]


def _bad_images_section(run_dir: Path) -> list[str]:
    """The run's unreadable images (``data.bad_images: skip``), from ``bad_images.json``."""
    from ..data.bad_images import BadImageLog

    text = BadImageLog.load(run_dir).to_markdown()
    return text.splitlines() + [""] if text else []


def plot_steps(
    records: Sequence[dict], path: str | Path, rule: str = "last", start: str = "direct transfer"
) -> Path | None:
    """Target rank-1 / mAP per step (step 0 = ``start``: the direct transfer, or the starting
    weights of a run without a source model), with the step ``rule`` picks and the oracle's,
    and the pseudo-labels' portion kept / pairwise F1 per step."""
    steps = [r for r in records if r.get("kind") == "step" and "mAP" in r]
    labels = [r for r in records if r.get("kind") == "labels" and not r.get("probe")]
    if not steps and not labels:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ax = axes[0]
    if steps:
        x = [r["step"] for r in steps]
        for key, style in (("rank1", "o-"), ("mAP", "s-")):
            ax.plot(x, [100 * r[key] for r in steps], style, label=key)
        by_step = {r["step"]: r for r in steps}
        marks = [(pick_step(records, rule), "picked", "k", "--")]
        if rule != "target_map":
            marks.append((pick_step(records, "target_map"), "oracle", "tab:red", ":"))
        for step, name, colour, ls in marks:
            if step is None or step not in by_step:
                continue
            ax.axvline(step, color=colour, lw=0.8, ls=ls)
            ax.annotate(
                name,
                (step, 100 * by_step[step]["mAP"]),
                textcoords="offset points",
                xytext=(4, -12),
                fontsize=8,
                color=colour,
            )
        ax.set_xticks(x)
    ax.set_xlabel(f"adaptation step (0 = {start.split(':')[0]})")
    ax.set_ylabel("target metric (%)")
    ax.set_title("target query / gallery")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    ax = axes[1]
    if labels:
        x = [r["step"] for r in labels]
        ax.plot(
            x, [100 * r.get("portion_kept", np.nan) for r in labels], "o-", label="portion kept"
        )
        if any("quality_f1" in r for r in labels):
            ax.plot(
                x,
                [100 * r.get("quality_f1", np.nan) for r in labels],
                "s-",
                label="pairwise F1 (analysis)",
            )
        ax2 = ax.twinx()
        ax2.plot(
            x, [r.get("num_clusters", np.nan) for r in labels], "^:", color="gray", label="clusters"
        )
        ax2.set_ylabel("clusters kept", color="gray")
        ax.set_xticks(x)
    ax.set_xlabel("adaptation step")
    ax.set_ylabel("%")
    ax.set_title("pseudo-labels")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_loss(records: Sequence[dict], path: str | Path) -> Path | None:
    """Training loss per epoch (all stages of the run in order)."""
    ep = [r for r in records if "loss" in r and "epoch" in r]
    if not ep:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(range(1, len(ep) + 1), [r["loss"] for r in ep], "-", lw=1.2)
    bounds = [i for i in range(1, len(ep)) if ep[i].get("step") != ep[i - 1].get("step")]
    for b in bounds:
        ax.axvline(b + 0.5, color="gray", lw=0.6, ls=":")
    ax.set_xlabel("epoch (dotted lines: new pseudo-labels)" if bounds else "epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def draw_ranklist(
    query_paths: Sequence[str],
    gallery_paths: Sequence[str],
    indices: np.ndarray,
    matches: np.ndarray,
    path: str | Path,
    *,
    cell: tuple[int, int] = (64, 128),
    border: int = 4,
) -> Path:
    """One row per query: the query image, then its top-k gallery images framed green
    (same identity) or red (another identity)."""
    w, h = cell
    nq = indices.shape[0]
    k = int((indices >= 0).sum(1).max()) if indices.size else 0
    gap = 10
    canvas = Image.new("RGB", (w + gap + k * w, nq * h), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(nq):
        canvas.paste(_thumb(query_paths[i], w, h, (60, 60, 200), border), (0, i * h))
        for j in range(k):
            g = int(indices[i, j])
            if g < 0:
                continue
            colour = (30, 170, 60) if matches[i, j] else (210, 40, 40)
            canvas.paste(_thumb(gallery_paths[g], w, h, colour, border), (w + gap + j * w, i * h))
    draw.line([(w + gap // 2, 0), (w + gap // 2, nq * h)], fill=(0, 0, 0), width=1)
    canvas.save(path)
    return Path(path)


def _thumb(path: str, w: int, h: int, colour, border: int) -> Image.Image:
    img = Image.open(path).convert("RGB").resize((w - 2 * border, h - 2 * border))
    framed = Image.new("RGB", (w, h), colour)
    framed.paste(img, (border, border))
    return framed


def _fmt_pct(v: Any) -> str:
    return f"{100 * v:.1f}" if isinstance(v, int | float) else "-"


def _backbone(run_dir: Path, cfg: dict[str, Any]) -> str:
    """The backbone the run's model has: its checkpoint's ``arch`` (an adaptation from
    ``adapt.init_checkpoint`` rebuilds that model, whatever ``model.backbone`` its preset
    says), else the config's."""
    from ..errors import CheckpointError
    from ..rundir.checkpoint import load_checkpoint

    for name in ("best.pt", "last.pt"):
        path = run_dir / "checkpoints" / name
        if path.is_file():
            try:
                arch = load_checkpoint(path).get("arch") or {}
            except CheckpointError:
                continue
            if arch.get("backbone"):
                return str(arch["backbone"])
    return str((cfg.get("model") or {}).get("backbone"))


def _precision_lines(records: list[dict[str, Any]]) -> list[str]:
    """What precision the run used (its last ``precision`` record: a resumed run may have
    chosen again), for training and for extraction / evaluation, with the reason."""
    found = [r for r in records if r.get("kind") == "precision"]
    if not found:
        return []
    rec = found[-1]

    def one(choice: Any) -> str:
        if not isinstance(choice, dict):
            return "-"
        name = {"none": "fp32", "bf16": "bf16", "fp16": "fp16"}.get(choice.get("amp"), "?")
        layout = " + channels_last" if choice.get("channels_last") else ""
        why = choice.get("compile_reason") or ""
        if choice.get("compile"):
            layout += f", backbone compiled ({why})"
        elif why and not why.startswith("compile=never"):
            layout += f", eager ({why})"
        return f"{name}{layout} ({choice.get('reason', '')})"

    return [
        f"- precision: training {one(rec.get('train'))}",
        f"- precision: extraction and evaluation {one(rec.get('extract'))}",
    ]


def write_report(run_dir: str | Path) -> Path:
    """(Re)write ``report.md`` and its plots in ``run_dir``; returns the report's path."""
    run_dir = Path(run_dir)
    records = RunDir(run_dir).read_metrics()
    lines = [f"# Run report: {run_dir.name}", ""]
    cfg_path = run_dir / "config.yaml"
    rule, start = "last", "direct transfer"  # a source run's, or a folder without its config
    if cfg_path.is_file():
        import yaml

        cfg = yaml.safe_load(cfg_path.read_text()) or {}
        d = cfg.get("data", {})
        is_source = any(r.get("stage") == "source" for r in records)
        method = cfg.get("method", "-")
        method = method.get("name", "-") if isinstance(method, dict) else method
        if is_source:
            method = "supervised source training"
        else:
            rule = (cfg.get("adapt") or {}).get("select", "last")
            start = start_of(cfg)
        lines += [
            f"- method: {method}; backbone `{_backbone(run_dir, cfg)}`",
            f"- source: `{d.get('source') or '-'}`; target: `{d.get('target') or '-'}`",
            f"- input {d.get('height')}x{d.get('width')}, seed {cfg.get('seed')}",
        ]
        lines += _precision_lines(records)
        if not is_source:
            lines.append(f"- best.pt (reported, exported): {RULE_NAMES.get(rule, rule)}")
            lines += _stop_lines(records)
        lines.append("")
    zero = "the direct transfer" if start == "direct transfer" else f"the starting model ({start})"
    summary = _summary_rows(records, rule, start)
    if summary:
        lines += [
            "## Results",
            "",
            "| stage | rank-1 | rank-5 | rank-10 | mAP | mINP |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in summary:
            lines.append(f"| {name} | " + " | ".join(_fmt_pct(r.get(m)) for m in METRICS) + " |")
        lines.append("")
        lines += _difference_lines(records, rule, start)
    steps = [r for r in records if r.get("kind") == "step"]
    labels = {r["step"]: r for r in records if r.get("kind") == "labels" and not r.get("probe")}
    selects = {r["step"]: r for r in records if r.get("kind") == "select"}
    if labels:
        score = rule if rule in ("agreement", "holdout", "snd", "cross_camera") else "agreement"
        lines += [
            "## Adaptation steps",
            "",
            "Pseudo-labels made at the start of the step, the step's model after training "
            f"(its label-free score `{score}` is computed from the next step's pseudo-labels), "
            "and where the step's time went.",
            "",
            "| step | eps | clusters | portion kept | multi-cam | precision | F1 | NMI | "
            f"{score} | rank-1 | mAP | time (s): extract / distance / cluster / train / eval |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        by_step = {r["step"]: r for r in steps}
        for s in sorted(set(labels) | set(by_step)):
            lab, st, sel = labels.get(s, {}), by_step.get(s, {}), selects.get(s, {})
            eps = lab.get("eps")
            times = " / ".join(
                f"{st[f'time_{k}_s']:.0f}" if f"time_{k}_s" in st else "-"
                for k in ("extract", "distance", "cluster", "train", "evaluate")
            )
            value = sel.get(score)
            lines.append(
                f"| {s} | {f'{eps:.3f}' if isinstance(eps, float) else '-'} | "
                f"{lab.get('num_clusters', '-')} | {_fmt_pct(lab.get('portion_kept'))} | "
                f"{_fmt_pct(lab.get('multi_camera_fraction'))} | "
                f"{_fmt_pct(lab.get('quality_precision'))} | "
                f"{_fmt_pct(lab.get('quality_f1'))} | {_fmt_pct(lab.get('quality_nmi'))} | "
                f"{f'{value:.3f}' if isinstance(value, float) and np.isfinite(value) else '-'} | "
                f"{_fmt_pct(st.get('rank1'))} | {_fmt_pct(st.get('mAP'))} | {times} |"
            )
        lines += [
            "",
            f"Step 0 is {zero}. Precision / F1 / NMI (pairwise, of the pseudo-labels) "
            "and rank-1 / mAP use the target's identities, which training and the label-free "
            "selection never see (analysis only).",
            "",
        ]
    if (run_dir / "bad_images.json").is_file():
        lines += _bad_images_section(run_dir)
    figs = []
    if plot_steps(records, run_dir / "steps.png", rule, start):
        figs.append(("Metric and pseudo-labels per step", "steps.png"))
    if plot_loss(records, run_dir / "loss.png"):
        figs.append(("Training loss", "loss.png"))
    if (run_dir / "ranklist.png").is_file():
        figs.append(
            ("Rank lists (query, then top-10 gallery; green = same identity)", "ranklist.png")
        )
    for title, name in figs:
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    from ..webpage.report_page import write_report_html

    write_report_html(run_dir, "\n".join(lines))  # report.html: the same, plus cluster samples
    return out


def _summary_rows(
    records: Sequence[dict], rule: str = "last", start: str = "direct transfer"
) -> list[tuple[str, dict]]:
    rows = []
    if any(r.get("kind") == "step" and r.get("step", 0) > 0 for r in records):
        rows += [(title, rec) for title, _, rec in selection_rows(records, rule)]
    direct = [r for r in records if r.get("stage") == "direct_transfer" and "mAP" in r]
    if direct:
        rows.append((f"{start} (step 0)", direct[-1]))
    src = [r for r in records if "source_mAP" in r]
    if src:
        best = max(src, key=lambda r: r["source_mAP"])
        rows.append(
            (
                f"source in-domain (epoch {best['epoch']})",
                {k[len("source_") :]: v for k, v in best.items() if k.startswith("source_")},
            )
        )
    return rows
