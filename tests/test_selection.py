"""Model selection (``adapt.select``): which step's model is ``best.pt``, reported first.

On a small synthetic run whose label-free score is made to disagree with the target mAP
(the score of each adapted model is ``1 - its mAP``, so the label-free rule must pick the
*worst* adapted step, while the oracle picks the best one), each rule must choose the step it
promises, ``best.pt`` must hold that step's model, and the report must show the rule's pick
first and the oracle second."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEMO_TINY, DEMO_TINY_ADAPT

from adaptreid.config import AdaptConfig, load_config
from adaptreid.engine import loop as loop_mod
from adaptreid.engine.loop import adapt
from adaptreid.engine.supervised import train_source
from adaptreid.errors import ConfigError
from adaptreid.evaluation import map_difference_interval
from adaptreid.evaluation.label_free import (
    choose_holdout,
    holdout_map,
    label_agreement,
    label_free_scores,
)
from adaptreid.report.report import pick_step, selection_rows, step_difference
from adaptreid.rundir.checkpoint import load_checkpoint
from adaptreid.rundir.model_io import model_from_checkpoint

TINY = [
    "data.source_options.preset=tiny",
    "data.target_options.preset=tiny",
    "data.num_workers=0",
    "optim.warmup_epochs=0",
]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("sel")
    roots = [f"data.source_root={tmp / 'data-src'}", f"data.target_root={tmp / 'data-tgt'}"]
    cfg = load_config(
        "demo/source.yaml",
        [
            f"output_dir={tmp}",
            "name=src",
            *roots,
            *DEMO_TINY,
            "train.epochs=2",
            "train.eval_every=1",
        ],
    )
    train_source(cfg, verbose=False)
    return tmp, tmp / "src" / "checkpoints" / "best.pt", roots


def _records(run):
    return [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]


def _run(source, name, rule, monkeypatch, *extra):
    tmp, ckpt, roots = source
    cfg = load_config(
        "demo/msplr.yaml",
        [
            f"output_dir={tmp}",
            f"name={name}",
            *roots,
            *DEMO_TINY_ADAPT,
            f"adapt.init_checkpoint={ckpt}",
            f"adapt.select={rule}",
            "adapt.max_steps=3",
            "adapt.patience=0",
            "adapt.epochs_per_step=2",
            "train.freeze_epochs=0",
            *extra,
        ],
        command="adapt",
    )
    metrics_file = tmp / name / "metrics.jsonl"
    calls = []

    def disagreeing(feats, camids, trained_on, relabelled, *, seed=0):
        """The real scores, with ``agreement`` replaced by 1 - mAP of the scored model."""
        out = label_free_scores(feats, camids, trained_on, relabelled, seed=seed)
        step = len(calls)  # the loop scores model 0, 1, 2, ... in order
        calls.append(step)
        recs = [json.loads(x) for x in metrics_file.read_text().splitlines()]
        m = next(r["mAP"] for r in recs if r["kind"] == "step" and r["step"] == step)
        out["agreement"] = math.nan if step == 0 else 1.0 - m
        return out

    monkeypatch.setattr(loop_mod, "label_free_scores", disagreeing)
    return adapt(cfg, verbose=False)


def _step_maps(recs):
    return {r["step"]: r["mAP"] for r in recs if r["kind"] == "step"}


RULE_RUNS = ("agreement", "target_map", "last")


@pytest.fixture(scope="module")
def rule_runs(source):
    """One 3-step run per rule, each with the disagreeing label-free score."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        return {rule: _run(source, f"sel_{rule}", rule, monkeypatch) for rule in RULE_RUNS}


@pytest.mark.slow
def test_each_rule_picks_its_step_and_best_pt_holds_it(rule_runs):
    picks = {}
    for rule, run in rule_runs.items():
        recs = _records(run)
        maps = _step_maps(recs)
        assert sorted(maps) == [0, 1, 2, 3]
        adapted = {s: m for s, m in maps.items() if s > 0}
        expected = {
            "agreement": min(adapted, key=lambda s: (adapted[s], s)),  # 1 - mAP is largest
            "target_map": max(maps, key=lambda s: (maps[s], -s)),
            "last": 3,
        }[rule]
        state = load_checkpoint(run.last)["loop"]
        assert state["best_step"] == expected == pick_step(recs, rule)
        # best.pt is that step's model: evaluated again at the end, it scores the same
        final = next(r for r in recs if r["kind"] == "final")
        assert final["mAP"] == pytest.approx(maps[expected], abs=1e-6)
        # the report: the rule's pick first, then the oracle (unless the rule is the oracle)
        report = (run.path / "report.md").read_text()
        rows = [x for x in report.splitlines() if x.startswith("| adapted, step")]
        assert rows[0].startswith(f"| adapted, step {expected} ")
        if rule == "target_map":
            assert "ORACLE" in rows[0] and len(rows) == 1
        else:
            oracle = pick_step(recs, "target_map")
            assert rows[1].startswith(f"| adapted, step {oracle} ") and "ORACLE" in rows[1]
        picks[rule] = expected
    # on this run the label-free score and the mAP disagree, so the picks differ
    assert picks["agreement"] != picks["target_map"]


@pytest.mark.slow
def test_label_free_patience_stops_without_labels(source, monkeypatch):
    """patience counts steps without a better label-free score: here each adapted model
    scores 1 - mAP; the run stops once `patience` models in a row do not beat the best."""
    run = _run(source, "sel_patience", "agreement", monkeypatch, "adapt.patience=1")
    recs = _records(run)
    scores = [r["agreement"] for r in recs if r["kind"] == "select" and r["step"] > 0]
    done = sorted(s for s in _step_maps(recs) if s > 0)
    # stopped at the first model that is not better than the one before it (or ran out)
    first_worse = next((i for i in range(1, len(scores)) if scores[i] <= scores[i - 1]), None)
    assert done == list(range(1, (first_worse + 1 if first_worse is not None else 3) + 1))
    assert load_checkpoint(run.last)["loop"]["stopped"] == (first_worse is not None)


def test_pick_step_on_records_where_rules_disagree():
    recs = [
        {"kind": "step", "step": 0, "mAP": 0.20},
        {"kind": "select", "step": 0, "agreement": float("nan"), "snd": 0.9},
        {"kind": "step", "step": 1, "mAP": 0.40},
        {"kind": "select", "step": 1, "agreement": 0.5, "snd": 0.7},
        {"kind": "step", "step": 2, "mAP": 0.35},
        {"kind": "select", "step": 2, "agreement": 0.6, "snd": 0.7},
        {"kind": "step", "step": 3, "mAP": 0.30},
    ]
    assert pick_step(recs, "agreement") == 2  # NaN never wins
    assert pick_step(recs, "snd") == 0  # ties go to the earlier step, as in the loop
    assert pick_step(recs, "target_map") == 1
    assert pick_step(recs, "last") == 3
    rows = selection_rows(recs, "agreement")
    assert [step for _, step, _ in rows] == [2, 1] and "ORACLE" in rows[1][0]


def test_pick_step_replays_patience_as_the_loop_stops():
    """holdout scores by step: 0 NaN, 1 .5, 2 .4, 3 .45, 4 .7 (a late best). Patience 2
    stops after step 3 (two adapted models in a row below step 1), so step 4 is never seen;
    patience 3 reaches it; 0 looks at every step."""
    scores = [math.nan, 0.5, 0.4, 0.45, 0.7]
    recs = [{"kind": "select", "step": s, "holdout": v} for s, v in enumerate(scores)]
    recs += [{"kind": "step", "step": s, "mAP": m} for s, m in enumerate([0.1, 0.3, 0.2, 0.5, 0.4])]
    assert pick_step(recs, "holdout") == 4
    assert pick_step(recs, "holdout", patience=2) == 1
    assert pick_step(recs, "holdout", patience=3) == 4
    assert pick_step(recs, "holdout", patience=1) == 1
    assert pick_step(recs, "target_map", patience=1) == 1  # stale at step 2
    assert pick_step(recs, "target_map") == 3
    assert pick_step(recs, "last", patience=1) == 4  # patience never ends a `last` run


def test_label_agreement_is_one_for_a_relabelling_and_falls_with_noise():
    a = np.repeat(np.arange(10), 5)
    perm = np.random.default_rng(0).permutation(10)
    assert label_agreement(a, perm[a])["score"] == pytest.approx(1.0)
    noisy = a.copy()
    noisy[::3] = (noisy[::3] + 1) % 10
    assert 0 < label_agreement(a, noisy)["score"] < 1
    dropped = a.copy()
    dropped[:25] = -1
    out = label_agreement(a, dropped)
    assert out["both"] == pytest.approx(0.5) and out["score"] == pytest.approx(0.5)
    assert label_agreement(-np.ones(5), -np.ones(5))["score"] == 0.0


def _load_script(name):
    """A script of benchmarks/ (not a package) as a module."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _cells(row):
    return [c.strip() for c in row.strip().strip("|").split("|")]


@pytest.mark.slow
def test_benchmark_tables_read_the_picks_from_the_run_records(source, rule_runs):
    """BENCHMARKS.md's adaptation tables (benchmarks/uda_tables.py) on runs whose label-free
    pick and oracle differ: the label-free row comes first and its gap to the oracle is the
    difference of the two steps' mAP in the records."""
    tables = _load_script("uda_tables")
    runs = [(rule, run.path) for rule, run in rule_runs.items()]
    maps = {rule: _step_maps(_records(run)) for rule, run in rule_runs.items()}
    oracle = {rule: pick_step(_records(run), "target_map") for rule, run in rule_runs.items()}

    rows = tables.select_table(runs)[2:]
    cells = _cells(rows[0])  # the agreement run: oracle, then agreement, snd, cross_camera, last
    assert cells[0] == "agreement"
    assert cells[1] == f"{oracle['agreement']} / {100 * maps['agreement'][oracle['agreement']]:.1f}"
    pick = pick_step(_records(rule_runs["agreement"]), "agreement")
    gap = 100 * (maps["agreement"][pick] - maps["agreement"][oracle["agreement"]])
    assert pick != oracle["agreement"] and gap < 0
    # the runs record per-query APs, so the gap carries its paired 90% interval over the
    # test identities, computed here from the per_query records themselves
    per = {r["step"]: r for r in _records(rule_runs["agreement"]) if r.get("kind") == "per_query"}
    ap = {s: np.array([np.nan if a is None else a for a in per[s]["ap"]]) for s in per}
    d = map_difference_interval(ap[pick], ap[oracle["agreement"]], np.asarray(per[pick]["pid"]))
    assert abs(100 * d.value - gap) < 1e-3  # per-query APs are recorded to 6 decimals
    interval = f"[{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
    assert cells[2] == f"{pick} / {100 * maps['agreement'][pick]:.1f} / {gap:+.1f} {interval}"

    tmp = source[0]
    t1 = tables.table1(tmp / "src", [("M", rule_runs["agreement"].path)])
    labels = [_cells(r)[0] for r in t1[2:]]
    assert labels == [
        "supervised on the target",
        "direct transfer (no adaptation)",
        "M, label-free pick (agreement)",
        "M, oracle: best target test mAP",
    ]
    # gap closed: (mAP - direct transfer) / (supervised - direct transfer), "-" without a gap
    hi, lo = tables.supervised(tmp / "src")["mAP"], maps["agreement"][0]
    assert _cells(t1[3])[5] == ("0%" if hi > lo else "-")
    share = f"{100 * (maps['agreement'][pick] - lo) / (hi - lo):.0f}%" if hi > lo else "-"
    assert _cells(t1[4])[5] == share
    assert _cells(t1[4])[6].startswith(f"step {pick} of 3")

    seeds = tables.seeds_table(runs, [("lost", 99.0, 99.5)])
    picked = [maps[r][pick_step(_records(rule_runs[r]), r)] for r in RULE_RUNS] + [0.99]
    assert _cells(seeds[2]) == ["agreement", f"{pick} / {100 * picked[0]:.1f}", _cells(rows[0])[1]]
    assert _cells(seeds[5]) == ["lost (recorded)", "99.0", "99.5"]
    low, mid, high = min(picked), (sorted(picked)[1] + sorted(picked)[2]) / 2, max(picked)
    summary = _cells(seeds[-2])
    assert summary[:2] == ["label-free pick", "4"]
    assert summary[2:] == [f"{100 * v:.1f}" for v in (low, mid, high)] + [
        f"{100 * (high - low):.1f}"
    ]


def test_benchmark_queue_skips_recorded_runs_but_trains_a_missing_source(tmp_path, monkeypatch):
    """benchmarks/uda_runs.py: a run finished in an earlier checkout leaves only its committed
    records; an adaptation run is then done, a source run is trained again for its
    checkpoint."""
    runs = _load_script("uda_runs")
    monkeypatch.setattr(runs, "ROOT", tmp_path)
    monkeypatch.setattr(runs, "RECORDS", tmp_path / "records")
    src = runs.Run("src", "train", "source/x.yaml")
    ada = runs.Run("ada", "adapt", "msplr/x.yaml")
    for r in (src, ada):
        assert runs.status(r) == "new" and runs.needs_running(r)
        folder = tmp_path / "runs" / r.name
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "checkpoints" / "last.pt").write_bytes(b"")
        assert runs.status(r) == "started" and runs.needs_running(r)
        (folder / "metrics.jsonl").write_text('{"kind": "step", "step": 0}\n{"kind": "final"}\n')
        (folder / "wall_time.json").write_text('[{"seconds": 60.0}]\n')
        assert runs.status(r) == "done" and not runs.needs_running(r)
        runs.save_records(r)
        shutil.rmtree(folder)  # a new checkout
        assert runs.status(r) == "recorded" and runs.wall_time(r) == 60.0
        assert sorted(p.name for p in (tmp_path / "records" / r.name).iterdir()) == [
            "metrics.jsonl",
            "wall_time.json",
        ]
    assert runs.needs_running(src) and not runs.needs_running(ada)


def test_benchmark_queue_prepares_a_missing_input_once(tmp_path, monkeypatch):
    """benchmarks/uda_runs.py: a run's ``prepare`` command runs when its path is missing (and
    its failure is reported), and not when the path is there."""
    runs = _load_script("uda_runs")
    monkeypatch.setattr(runs, "ROOT", tmp_path)
    make = [sys.executable, "-c", "import pathlib; pathlib.Path('made').write_text('x')"]
    run = runs.Run("ada", "adapt", "msplr/x.yaml", prepare=("made", make))
    assert runs.prepare(run) == 0 and (tmp_path / "made").read_text() == "x"
    (tmp_path / "made").write_text("kept")
    assert runs.prepare(run) == 0 and (tmp_path / "made").read_text() == "kept"
    failing = runs.Run("b", "adapt", "x.yaml", prepare=("absent", [sys.executable, "-c", "1/0"]))
    assert runs.prepare(failing) != 0 and not (tmp_path / "absent").exists()
    assert runs.prepare(runs.Run("c", "adapt", "x.yaml")) == 0


def test_choose_holdout_takes_multi_camera_clusters_and_never_more_than_half():
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, -1, 6, 6])
    cams = np.array([1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 1, 1, 2, 2])  # 5, 6: one camera each
    chosen = choose_holdout(labels, cams, 0.5, seed=3)
    assert set(chosen) <= {0, 1, 2, 3, 4} and len(chosen) == 2  # half of 5, rounded down
    assert np.array_equal(chosen, choose_holdout(labels, cams, 0.5, seed=3))  # seeded
    assert len(choose_holdout(labels, cams, 0.0)) == 0
    # unknown cameras: any cluster of two images or more is eligible
    assert set(choose_holdout(labels, -np.ones(15, int), 0.9)) <= {0, 1, 2, 3, 4, 5, 6}
    with pytest.raises(ValueError, match="adapt.holdout"):
        choose_holdout(labels, cams, 1.0)


def test_holdout_map_is_one_for_separated_clusters_and_falls_with_confusing_distractors():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    labels = np.repeat(np.arange(4), 3)
    cams = np.tile([1, 2, 3], 4)
    feats = centres[labels] + 0.01 * rng.normal(size=(12, 16))
    far = rng.normal(size=(30, 16)) * 5
    assert holdout_map(feats, labels, cams) == pytest.approx(1.0)
    assert holdout_map(feats, labels, cams, far) == pytest.approx(1.0)
    # distractors that sit on top of the held-back people push true matches down the list
    close = np.repeat(centres, 5, axis=0) + 0.001 * rng.normal(size=(20, 16))
    assert holdout_map(feats, labels, cams, close) < 0.6
    # one cluster only and nothing else to search among, or no camera-crossing match
    assert math.isnan(holdout_map(feats[:3], labels[:3], cams[:3]))
    assert holdout_map(feats[:3], labels[:3], cams[:3], far) == pytest.approx(1.0)
    assert math.isnan(holdout_map(feats, labels, np.ones(12, int)))
    # unknown cameras: only the query itself is left out
    assert holdout_map(feats, labels, -np.ones(12, int)) == pytest.approx(1.0)


@pytest.mark.slow
def test_holdout_images_are_never_trained_on_and_every_step_model_is_kept(source, monkeypatch):
    run = _run(
        source, "sel_holdout", "holdout", monkeypatch, "adapt.holdout=0.3", "adapt.keep_steps=true"
    )
    recs = _records(run)
    held = load_checkpoint(run.last)["loop"]["holdout"]
    assert held, "no cluster was held back"
    scores = {r["step"]: r["holdout"] for r in recs if r["kind"] == "select"}
    assert math.isnan(scores[0]) and all(0 <= scores[s] <= 1 for s in (1, 2, 3))
    assert pick_step(recs, "holdout") == load_checkpoint(run.last)["loop"]["best_step"]
    for step in (1, 2, 3):
        kept = load_checkpoint(run.path / "steps" / f"step_{step}.pt")
        labels = dict(zip(kept["paths"], kept["labels"].tolist()))
        assert all(labels[p] == -1 for p in held)  # trained on by no step
        assert (kept["labels"] >= 0).any()
        model, _ = model_from_checkpoint(run.path / "steps" / f"step_{step}.pt")
        assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.slow
def test_default_rule_and_patience_keep_the_step_before_a_degradation(source, monkeypatch):
    """A tiny run that peaks at step 1: from step 2 on, every weight gets noise after the step
    trains (a model wrecked as by a collapse of its labels, as on the small targets of
    BENCHMARKS.md). With the config's default rule and patience, the run stops two steps
    later and keeps step 1's model: the step the oracle keeps too."""
    default = AdaptConfig()
    assert default.select == "holdout" and default.patience == 2 and default.holdout > 0
    train_stages = loop_mod.AdaptationLoop._train_stages

    def degrading(self, model):
        model = train_stages(self, model)
        if self.state.step >= 2:
            gen = torch.Generator().manual_seed(self.state.step)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * (p.abs().mean() + 1e-3) * 3)
        return model

    monkeypatch.setattr(loop_mod.AdaptationLoop, "_train_stages", degrading)
    run = _run(
        source,
        "sel_default_degrading",
        default.select,
        monkeypatch,
        f"adapt.holdout={default.holdout}",
        f"adapt.patience={default.patience}",
        "adapt.max_steps=6",
    )
    recs = _records(run)
    maps = _step_maps(recs)
    state = load_checkpoint(run.last)["loop"]
    assert sorted(maps) == [0, 1, 2, 3] and state["stopped"]  # 2 steps without a better score
    assert state["best_step"] == 1 == pick_step(recs, "holdout") == pick_step(recs, "target_map")
    final = next(r for r in recs if r["kind"] == "final")
    assert final["mAP"] == pytest.approx(maps[1], abs=1e-6)  # best.pt is step 1's model
    report = (run.path / "report.md").read_text()
    assert "| adapted, step 1 (" in report
    assert "stopped early** after step 3 of at most 6" in report and "best.pt is step 1" in report


def _spy_on_eps_sweep(monkeypatch, field):
    """Record ``settings.<field>`` at each label-free eps sweep of the loop."""
    from adaptreid.engine import pseudo_step

    seen = []
    auto_eps = pseudo_step.auto_eps

    def spy(features, camids, settings, **kw):
        seen.append(getattr(settings, field))
        return auto_eps(features, camids, settings, **kw)

    monkeypatch.setattr(pseudo_step, "auto_eps", spy)
    return seen


@pytest.mark.slow
def test_kept_growth_cap_reaches_the_eps_sweep(source, monkeypatch):
    """``pseudo.max_kept_growth``: from step 2 on, the label-free eps sweep may keep at most
    the last labels' portion (held-back images counted) plus the growth; step 1 is free."""
    seen = _spy_on_eps_sweep(monkeypatch, "max_portion")
    run = _run(
        source,
        "sel_growth",
        "holdout",
        monkeypatch,
        "adapt.holdout=0.3",
        "pseudo.max_kept_growth=0.05",
    )
    labels = [r for r in _records(run) if r["kind"] == "labels"]
    assert seen[0] == 1.0 and len(seen) == len(labels) >= 3
    for prev, cap in zip(labels, seen[1:]):  # which eps it then takes: test_pseudo.py
        assert cap == pytest.approx(min(1.0, prev["portion_kept"] + 0.05), abs=1e-6)


@pytest.mark.slow
def test_kept_floor_reaches_the_eps_sweep(source, monkeypatch):
    """``pseudo.kept_never_shrinks``: from step 2 on, the label-free eps sweep keeps at least
    the last labels' portion; step 1 has no floor; off, there is none."""
    seen = _spy_on_eps_sweep(monkeypatch, "min_portion")
    run = _run(source, "sel_floor", "agreement", monkeypatch, "pseudo.kept_never_shrinks=true")
    labels = [r for r in _records(run) if r["kind"] == "labels"]
    assert seen[0] == 0.0 and len(seen) == len(labels) >= 3
    for prev, floor in zip(labels, seen[1:]):  # which eps it then takes: test_pseudo.py
        assert floor == pytest.approx(prev["portion_kept"], abs=1e-6) and floor > 0
    seen.clear()
    _run(source, "sel_no_floor", "agreement", monkeypatch)
    assert seen and set(seen) == {0.0}


def _tiny_adapt_cfg(source, name, *extra):
    tmp, ckpt, roots = source
    return load_config(
        "demo/msplr.yaml",
        [
            f"output_dir={tmp}",
            f"name={name}",
            *roots,
            *DEMO_TINY_ADAPT,
            f"adapt.init_checkpoint={ckpt}",
            "adapt.max_steps=2",
            "adapt.patience=0",
            "adapt.epochs_per_step=1",
            "train.freeze_epochs=0",
            *extra,
        ],
        command="adapt",
    )


def test_eval_steps_final_evaluates_only_the_kept_model(source):
    """eval.steps=final: no step is evaluated on the target's test split (a user without
    labels has none), best.pt is, once, at the end; the oracle rule refuses it."""
    run = adapt(
        _tiny_adapt_cfg(source, "final_only", "eval.steps=final", "adapt.select=agreement"),
        verbose=False,
    )
    recs = _records(run)
    steps = [r for r in recs if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [0, 1, 2]
    assert not any("mAP" in r for r in steps)
    assert all(r.get("time_evaluate_s", 0.0) == 0.0 for r in steps)
    final = [r for r in recs if r["kind"] == "final"]
    assert len(final) == 1 and 0.0 <= final[0]["mAP"] <= 1.0
    with pytest.raises(ConfigError, match="eval.steps=every"):
        adapt(
            _tiny_adapt_cfg(source, "final_oracle", "eval.steps=final", "adapt.select=target_map"),
            verbose=False,
        )


@pytest.mark.slow
def test_each_evaluated_step_records_its_queries_aps_and_the_report_compares_steps(rule_runs):
    """The ``per_query`` record of every evaluated step averages to the step's mAP, and the
    report states the kept step's difference from the oracle's with its interval."""
    run = rule_runs["agreement"]  # kept: the worst adapted step (the score is 1 - mAP)
    recs = _records(run)
    maps = _step_maps(recs)
    per = {r["step"]: r for r in recs if r["kind"] == "per_query"}
    assert sorted(per) == sorted(maps)
    for step, rec in per.items():
        aps = [a for a in rec["ap"] if a is not None]
        assert len(rec["ap"]) == len(rec["pid"]) and aps
        assert np.mean(aps) == pytest.approx(maps[step], abs=1e-4)  # APs rounded to 1e-5
    kept, oracle = pick_step(recs, "agreement"), pick_step(recs, "target_map")
    d = step_difference(recs, kept, oracle)
    assert d.value == pytest.approx(maps[kept] - maps[oracle], abs=1e-4)
    assert d.low <= d.value <= d.high
    report = (run.path / "report.md").read_text()
    if kept != oracle:
        assert f"step {kept} (kept) minus the oracle's step {oracle}" in report
    assert f"minus the direct transfer, step 0: {100 * (maps[kept] - maps[0]):+.1f} mAP" in report


def test_selection_queue_redoes_only_finished_runs_recorded_without_per_query_aps(
    tmp_path, monkeypatch
):
    """benchmarks/selection_runs.py --redo: a run whose committed records lack per-query APs
    is run again; one that has them, or whose folder is still here, is not."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    sel = _load_script("selection_runs")  # it imports uda_runs from there, as U
    monkeypatch.setattr(sel.U, "ROOT", tmp_path)
    monkeypatch.setattr(sel, "ROOT", tmp_path)
    monkeypatch.setattr(sel, "RECORDS", tmp_path / "records")
    final = '{"kind": "step", "step": 0, "mAP": 0.1}\n{"kind": "final"}\n'
    old, new = sel.U.Run("old", "adapt", "x.yaml"), sel.U.Run("new", "adapt", "x.yaml")
    for run, extra in ((old, ""), (new, '{"kind": "per_query", "step": 0, "ap": [], "pid": []}\n')):
        (tmp_path / "records" / run.name).mkdir(parents=True)
        (tmp_path / "records" / run.name / "metrics.jsonl").write_text(extra + final)
    assert sel._without_per_query(old) and not sel._without_per_query(new)
    (tmp_path / "runs" / "old").mkdir(parents=True)  # its folder, finished, is here
    (tmp_path / "runs" / "old" / "metrics.jsonl").write_text(final)
    assert not sel._without_per_query(old)
