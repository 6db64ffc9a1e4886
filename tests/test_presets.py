"""The shipped presets: at most two levels of inheritance (a method base, itself on
base/recipe.yaml at most, + one file per pair), nothing restated from base/recipe.yaml, and
every preset resolves to exactly the config it resolved to before the presets were flattened
(tests/data/presets_resolved.json, written by the code before that change; config fields
added since, ``adapt.holdout`` and ``adapt.keep_steps``, were added to it at their defaults,
checked to be the only difference). Issue 24 changed it on purpose, checked to be the only
differences: the config defaults of ``adapt.select`` / ``adapt.holdout`` / ``adapt.patience``
(holdout / 0.15 / 2), ``adapt.patience: 2`` in the MSPLR and PAST bases, and the three
``own_cameras_cpu.yaml`` presets added, and the new ``pseudo.max_kept_growth`` at its default
(0) everywhere. Issue 29 changed it on purpose, checked to be the only differences:
``method.triplet_reading: per_part_cosine`` (the released code's CTL / RTL, per part on
normalised features with the cosine distance) in every PAST preset, and the new field
``model.allow_partial_weights`` at its default (false) in every preset. Issue 27 added
fields at their defaults, checked to be the only differences: ``eval.steps`` (every),
``train.compile`` (never); issue 26: ``method.memory`` (cluster), ``method.inter_weight``
(0.5) and ``method.hard_negatives`` (50) in the cluster contrast presets; issue 27 (image
cache): ``data.image_cache`` (disk) and ``data.image_cache_dir`` ("") in every preset; issue 27
("A million images"): ``pseudo.neighbors`` (exact) and ``pseudo.neighbors_nprobe`` (0) in every
preset, checked to be the only difference; issue 26 (best recipe): MSPLR's
``method.memory`` (none), ``memory_weight`` (1.0), ``temperature`` (0.05), ``momentum``
(0.2), ``inter_weight`` (0.5) and ``hard_negatives`` (50) in every preset whose method is
MSPLR (the method default, so the source presets too), checked to be the only difference,
and the two new ``msplr/*_memory_cpu.yaml`` presets; issue 27 (the approximate search
reworked): ``pseudo.neighbors`` now ``auto`` (approximate from
``adaptreid.pseudo.settings.APPROX_MIN_N`` images up) in every preset, checked to be the only
difference; issue 29 (B): the two CPU PAST presets of Market-1501 <-> DukeMTMC-reID start from
the PCB source models (``adapt.init_checkpoint``), checked to be the only difference; issue 26
(equal wall time): the two new ``cluster_contrast/*_camera_cpu.yaml`` presets, added as they
resolve (and checked below to be their measured runs); issue 26 (item 3): the two new
``msplr/*_unsupervised_cpu.yaml`` presets, added as they resolve (and checked below to be
the UDA recipe from ImageNet weights); issue 26 (a kept-portion floor):
``pseudo.kept_never_shrinks`` (false) and ``pseudo.giant_factor`` (5.0) in every preset,
checked to be the only difference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from adaptreid.config import PACKAGE_CONFIG_DIR, load_config, to_dict

RESOLVED = json.loads((Path(__file__).parent / "data" / "presets_resolved.json").read_text())
#: presets moved since the reference was written: new path -> old path
MOVED = {
    "source/market1501_pcb.yaml": "past/source_market1501_pcb.yaml",
    "source/market1501_pcb_cpu.yaml": "past/source_market1501_pcb_cpu.yaml",
    "source/dukemtmc_pcb.yaml": "past/source_dukemtmc_pcb.yaml",
    "source/dukemtmc_pcb_cpu.yaml": "past/source_dukemtmc_pcb_cpu.yaml",
}
PRESETS = sorted(str(p.relative_to(PACKAGE_CONFIG_DIR)) for p in PACKAGE_CONFIG_DIR.rglob("*.yaml"))
RECIPE = "base/recipe.yaml"


def _raw(rel: str) -> dict:
    return yaml.safe_load((PACKAGE_CONFIG_DIR / rel).read_text()) or {}


def _bases(rel: str) -> list[str]:
    bases = _raw(rel).get("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    return [
        str(
            (PACKAGE_CONFIG_DIR / rel)
            .parent.joinpath(b)
            .resolve()
            .relative_to(PACKAGE_CONFIG_DIR.resolve())
        )
        for b in bases
    ]


def _depth(rel: str) -> int:
    return max((1 + _depth(b) for b in _bases(rel)), default=0)


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def test_every_old_preset_is_still_shipped():
    assert sorted([*(set(PRESETS) - set(MOVED)), *MOVED.values()]) == sorted(RESOLVED)


@pytest.mark.parametrize("rel", PRESETS)
def test_preset_resolves_as_before(rel):
    assert to_dict(load_config(PACKAGE_CONFIG_DIR / rel)) == RESOLVED[MOVED.get(rel, rel)]


@pytest.mark.parametrize("rel", PRESETS)
def test_at_most_two_levels(rel):
    assert _depth(rel) <= 2, f"{rel} inherits {_depth(rel)} levels deep"
    for base in _bases(rel):  # a pair inherits its method's base (or the recipe), never a pair
        assert base == RECIPE or base.endswith("/base.yaml"), f"{rel} inherits {base}"


@pytest.mark.parametrize("rel", [p for p in PRESETS if p.endswith("/base.yaml")])
def test_method_bases_restate_nothing_of_the_recipe(rel):
    recipe = _leaves({k: v for k, v in _raw(RECIPE).items() if k != "_base_"})
    own = _leaves({k: v for k, v in _raw(rel).items() if k != "_base_"})
    restated = sorted(k for k, v in own.items() if k in recipe and recipe[k] == v)
    assert restated == [], f"{rel} restates {restated} of {RECIPE}"


@pytest.mark.parametrize(
    ("pair", "run"),
    [
        ("market1501_to_dukemtmc", "cc_m2d_cn_sel_cap_20"),
        ("dukemtmc_to_market1501", "cc_d2m_cn_sel_cap_20"),
    ],
)
def test_camera_cluster_contrast_presets_are_the_measured_runs(pair, run):
    """Issue 26: ``cluster_contrast/*_camera_cpu.yaml`` are the cluster contrast CPU pair with
    the overrides of the benchmark run measured for it (benchmarks/uda_runs.py), nothing else:
    only the source checkpoint's path may differ (the Market -> Duke run starts from
    ../shared/checkpoints' copy of the same model)."""
    from tests.test_selection import _load_script

    runs = {r.name: r for r in _load_script("uda_runs").RUNS}
    overrides = [o for o in runs[run].overrides if not o.startswith("adapt.init_checkpoint=")]
    assert runs[run].config == f"cluster_contrast/{pair}_cpu.yaml"
    measured = to_dict(load_config(f"cluster_contrast/{pair}_cpu.yaml", overrides, command="adapt"))
    camera = to_dict(load_config(f"cluster_contrast/{pair}_camera_cpu.yaml", command="adapt"))
    assert camera.pop("name") == f"cc_{pair}_camera_cpu"
    assert measured.pop("name") == f"cc_{pair}_cpu"
    assert camera == measured
    # and the switches are on (a preset equal to a run without them would pass the line above)
    assert camera["pseudo"]["camera_norm"] and camera["pseudo"]["select"]
    assert camera["method"]["memory"] == "camera_proxy"


@pytest.mark.parametrize(
    ("target", "uda", "steps"),
    [("market1501", "dukemtmc_to_market1501", 10), ("dukemtmc", "market1501_to_dukemtmc", 6)],
)
def test_unsupervised_msplr_presets_are_the_uda_recipe_from_imagenet(target, uda, steps):
    """Issue 26 item 3: ``msplr/*_unsupervised_cpu.yaml`` run the MSPLR CPU preset of the same
    target (pseudo-labels, losses, data, a step's epochs) with no source model: the network is
    the source presets' ImageNet MobileNetV2 and no source data is read. Only the number of
    steps may differ (Market-1501 takes 10: from ImageNet its first steps keep 3%)."""
    unsup = to_dict(load_config(f"msplr/{target}_unsupervised_cpu.yaml", command="adapt"))
    recipe = to_dict(load_config(f"msplr/{uda}_cpu.yaml", command="adapt"))
    source = to_dict(load_config(f"source/{target}_mobilenet_cpu.yaml", command="train"))
    assert unsup["adapt"].pop("init_checkpoint") == ""
    assert recipe["adapt"].pop("init_checkpoint").startswith("runs/source_")
    assert unsup["adapt"].pop("max_steps") == steps
    assert recipe["adapt"].pop("max_steps") == 6
    assert unsup.pop("model") == source["model"]  # the network the source model was made from
    assert unsup["data"]["target"] == recipe["data"]["target"] == target
    for d in (unsup, recipe):
        d.pop("name"), d.pop("model", None)
        d["data"].pop("source"), d["data"].pop("source_root")
    assert unsup == recipe


@pytest.mark.parametrize(
    ("target", "run"),
    [
        ("market1501", "msplr_market1501_unsupervised_10"),
        ("dukemtmc", "msplr_dukemtmc_unsupervised_cpu"),
    ],
)
def test_unsupervised_msplr_presets_are_the_measured_runs(target, run):
    """Each fully unsupervised preset is the uda_runs run its header quotes, nothing else."""
    from tests.test_selection import _load_script

    measured_run = {r.name: r for r in _load_script("uda_runs").RUNS}[run]
    rel = f"msplr/{target}_unsupervised_cpu.yaml"
    assert measured_run.config == rel
    measured = to_dict(load_config(rel, measured_run.overrides, command="adapt"))
    assert measured == to_dict(load_config(rel, command="adapt"))
