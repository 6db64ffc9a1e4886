"""adaptreid.evaluation.bootstrap: the identity-resampled interval of an mAP and of two
models' paired difference."""

from __future__ import annotations

import numpy as np
import pytest

from adaptreid.evaluation import ap_from_record, map_difference_interval, map_interval
from adaptreid.evaluation.bootstrap import resampled_means
from adaptreid.report.report import gap_text, step_difference


def test_resampled_means_match_the_queries_of_the_drawn_identities_concatenated():
    rng = np.random.default_rng(0)
    values = rng.random(11)
    groups = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 4])
    sums = np.bincount(groups, weights=values)
    sizes = np.bincount(groups).astype(float)
    counts = rng.multinomial(5, np.full(5, 0.2), size=7)
    for b in range(7):  # by hand: every drawn identity brings all of its queries
        drawn = np.concatenate([values[groups == g] for g in range(5) for _ in range(counts[b, g])])
        assert resampled_means(counts, sums, sizes)[b] == pytest.approx(drawn.mean())


def test_a_constant_difference_has_a_zero_width_interval_and_equal_models_zero():
    rng = np.random.default_rng(1)
    b = rng.random(40) * 0.8
    pids = np.repeat(np.arange(10), 4)
    d = map_difference_interval(b + 0.1, b, pids)
    assert d.value == pytest.approx(0.1) and d.low == pytest.approx(0.1)
    assert d.high == pytest.approx(0.1) and not d.contains(0.0)
    same = map_difference_interval(b, b, pids)
    assert same.value == same.low == same.high == 0.0 and same.contains(0.0)
    assert (same.num_queries, same.num_identities) == (40, 10)


def test_the_interval_widens_when_the_same_queries_belong_to_fewer_identities():
    ap = np.tile([0.0, 1.0], 20)  # 40 queries, mean 0.5
    many = map_interval(ap, np.arange(40))  # each query its own identity
    two = map_interval(ap, ap.astype(int))  # all the 0s one person, all the 1s another
    assert many.value == two.value == 0.5
    assert many.low < 0.5 < many.high and two.num_identities == 2
    assert two.high - two.low > many.high - many.low
    assert (two.low, two.high) == (0.0, 1.0)  # resamples of 2 identities: 0, 0.5 or 1


def test_skipped_queries_are_left_out_and_the_same_seed_gives_the_same_interval():
    ap = np.array([0.2, np.nan, 0.6, 0.4, np.nan, 1.0])
    pids = np.array([1, 1, 2, 3, 3, 4])
    m = map_interval(ap, pids, n_boot=500, seed=3)
    assert m.value == pytest.approx(0.55) and (m.num_queries, m.num_identities) == (4, 4)
    assert m == map_interval(ap, pids, n_boot=500, seed=3)
    other = np.array([0.1, 0.5, np.nan, 0.4, 0.3, 0.8])  # valid in both: queries 0, 3, 5
    d = map_difference_interval(ap, other, pids)
    assert d.num_queries == 3 and d.value == pytest.approx((0.1 + 0.0 + 0.2) / 3)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: map_interval(np.ones((2, 2)), np.arange(4)), "1-d array"),
        (lambda: map_interval(np.array([0.5, 1.5]), np.arange(2)), r"\[0, 1\]"),
        (lambda: map_interval(np.array([0.5, 0.5]), np.arange(3)), "pids has shape"),
        (lambda: map_interval(np.array([np.nan]), np.arange(1)), "all NaN"),
        (lambda: map_interval(np.array([0.5]), np.arange(1), level=1.0), "level"),
        (lambda: map_interval(np.array([0.5]), np.arange(1), n_boot=0), "n_boot"),
        (lambda: map_difference_interval(np.ones(3), np.ones(2), np.arange(3)), "expected 3"),
        (
            lambda: map_difference_interval(
                np.array([np.nan, 0.5]), np.array([0.5, np.nan]), np.arange(2)
            ),
            "for both models",
        ),
    ],
)
def test_bad_input_is_refused_with_a_message_naming_it(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _records(maps: dict[int, float], aps: dict[int, list]) -> list[dict]:
    recs = []
    for step, m in maps.items():
        if step in aps:
            recs.append({"kind": "per_query", "step": step, "ap": aps[step], "pid": [1, 1, 2, 3]})
        recs.append({"kind": "step", "step": step, "mAP": m})
    return recs


def test_run_records_give_the_difference_of_two_steps_only_with_both_steps_per_query_aps():
    aps = {0: [0.1, 0.2, None, 0.3], 1: [0.5, 0.6, 0.7, 0.7], 2: [0.5, 0.6, 0.7, 0.6]}
    maps = {s: float(np.mean([a for a in v if a is not None])) for s, v in aps.items()}
    recs = _records(maps, aps)
    d = step_difference(recs, 1, 0)
    assert d.value == pytest.approx(0.4) and d.num_queries == 3  # query 2 skipped at step 0
    low, high = (float(x) for x in gap_text(recs, 2, 1)[len("-2.5 [") : -1].split(", "))
    assert gap_text(recs, 2, 1).startswith("-2.5 [") and low <= -2.5 <= high <= 0.0
    assert gap_text(recs, 1, 1) == "+0.0"
    old = _records(maps, {})  # a run made before per-query records: the gap alone
    assert step_difference(old, 1, 0) is None and gap_text(old, 0, 1) == "-42.5"
    moved = recs + [{"kind": "per_query", "step": 2, "ap": [0.5] * 4, "pid": [1, 2, 3, 4]}]
    assert step_difference(moved, 2, 1) is None  # another query list: not paired


def test_ap_from_record_reads_nulls_as_queries_without_a_match():
    """A per_query record stores NaN APs as null (JSON has no NaN); read back, they are NaN
    again, so map_interval skips the same queries as on the array the record was made from."""
    import json

    ap = np.array([0.5, np.nan, 1.0, 0.25])
    stored = json.loads(json.dumps([None if np.isnan(a) else float(a) for a in ap]))
    back = ap_from_record(stored)
    assert back.dtype == np.float64
    np.testing.assert_array_equal(np.isnan(back), np.isnan(ap))
    np.testing.assert_array_equal(back[~np.isnan(back)], ap[~np.isnan(ap)])
    pids = np.array([1, 1, 2, 3])
    assert map_interval(back, pids).value == map_interval(ap, pids).value
