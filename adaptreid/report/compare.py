"""Two evaluations of one query list compared (``adaptreid evaluate --compare``): the
difference of their mAP with its paired bootstrap interval over the query identities
(:func:`adaptreid.evaluation.map_difference_interval`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import AdaptReIDError
from ..evaluation import ap_from_record, map_difference_interval


def load_per_query(folder: Path) -> dict:
    """The ``per_query`` field of ``folder/metrics.json`` (an earlier ``--out``), read before
    any feature is extracted; a clear error when it is missing."""
    path = folder / "metrics.json"
    if not path.is_file():
        raise AdaptReIDError(f"--compare {folder}: no metrics.json there (write one with --out)")
    other = json.loads(path.read_text()).get("per_query")
    if not isinstance(other, dict) or "ap" not in other or "pid" not in other:
        raise AdaptReIDError(
            f"{path}: no 'per_query' field (written by an adaptreid evaluate older than "
            "--compare); evaluate that model again with --out"
        )
    return {**other, "path": str(path)}


def compare_text(ap, query_pids, other: dict) -> str:
    """This evaluation's mAP minus ``other``'s (:func:`load_per_query`), with the paired
    bootstrap interval over the identities; a clear error when the queries differ."""
    pids = [int(x) for x in query_pids]
    if other["pid"] != pids:
        raise AdaptReIDError(
            f"{other['path']}: its {len(other['pid'])} queries are not this evaluation's "
            f"{len(pids)} (another dataset or split, or other unreadable images): nothing to pair"
        )
    d = map_difference_interval(np.asarray(ap), ap_from_record(other["ap"]), np.asarray(pids))
    verdict = (
        "the test identities cannot tell the two models apart at that level"
        if d.contains(0.0)
        else "the difference holds at that level"
    )
    return (
        f"mAP minus {other['path']}'s: {100 * d.value:+.2f}, 90% interval "
        f"[{100 * d.low:+.2f}, {100 * d.high:+.2f}] over {d.num_identities} identities "
        f"({d.num_queries} queries ranked by both): {verdict}"
    )
