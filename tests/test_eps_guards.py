"""benchmarks/eps_guards.py: the growth guard of the issue 26 study, by hand on sweep rows."""

from __future__ import annotations

import json

import pytest

from tests.test_selection import _load_script


def _row(eps, largest, median, clusters, kept):
    return {
        "eps": eps,
        "max_cluster_size": largest,
        "median_cluster_size": median,
        "clusters": clusters,
        "portion_kept": kept,
        "score": clusters * kept,
        "images_kept": int(kept * 1000),
        "precision": 0.9,
        "f1": 0.8,
    }


# the largest cluster doubles at 0.2 while small (3x its median: no chaining), grows 1.2x a
# step until 0.5 (4.8x), then 2x at 0.6, where it also passes 5x the median
ROWS = [
    _row(0.1, 6, 3, 10, 0.1),
    _row(0.2, 12, 4, 20, 0.2),
    _row(0.3, 14, 4, 30, 0.3),
    _row(0.4, 17, 4, 40, 0.4),
    _row(0.5, 20, 4, 50, 0.5),
    _row(0.6, 40, 4, 60, 0.6),
    _row(0.7, 400, 4, 70, 0.7),
]


def test_growth_onset_is_the_first_jump_past_five_medians():
    guards = _load_script("eps_guards")
    assert guards.growth_onset(ROWS, 1.5) == 0.6
    # a looser growth factor lets the 2x jump through and stops at the 10x one
    assert guards.growth_onset(ROWS, 3.0) == 0.7
    assert guards.growth_onset(ROWS[:5], 1.5) is None
    with pytest.raises(ValueError, match="growth must be > 1"):
        guards.growth_onset(ROWS, 1.0)


def test_growth_pick_stays_below_the_onset_where_the_ratio_guards_differ():
    guards = _load_script("eps_guards")
    chosen = guards.picks(ROWS, 1.5)
    # the score rises with eps; 5x the median first fails at 0.6 (40 > 20), as the growth
    # onset; 10x lets 0.6 through (40 <= 40) and stops at 0.7
    assert chosen == {"5x median": 0.5, "10x median": 0.6, "growth 1.5x": 0.5}


def test_main_prints_one_line_per_sweep(tmp_path, capsys):
    guards = _load_script("eps_guards")
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"rows": ROWS}))
    assert guards.main([str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| sweep | guard: 5x median")
    assert out[2].startswith("| a | 0.5: 50% kept, P 0.90, F1 0.80")
