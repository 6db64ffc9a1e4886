"""Issue 29, item K: every choice field is checked when a config is loaded (with the valid
values and a "Did you mean"), and no command accepts a key it does not read: ``adaptreid
adapt`` refuses source-training keys set away from their default, PAST refuses the settings
it would not read under the config given (DBSCAN's with HDBSCAN, cluster selection's with
``pseudo.select: false``, a soft margin), while every shipped preset still loads."""

from __future__ import annotations

import dataclasses
import typing

import pytest

import adaptreid.methods  # noqa: F401  (registers the built-in methods)
from adaptreid.cli import main
from adaptreid.config import PACKAGE_CONFIG_DIR, Config, load_config
from adaptreid.engine.method import method_class
from adaptreid.errors import ConfigError
from adaptreid.registry import METHOD_OPTIONS

#: every config field with a fixed set of values (method options: ``<method>:method.<key>``)
CHOICE_KEYS = {
    "data.bad_images",
    "data.image_cache",
    "model.pooling",
    "model.neck_feat",
    "optim.name",
    "train.amp",
    "train.keep",
    "train.compile",
    "eval.metric",
    "eval.steps",
    "pseudo.method",
    "pseudo.distance",
    "pseudo.s_min_reading",
    "pseudo.neighbors",
    "adapt.select",
    "msplr:method.freeze",
    "msplr:method.memory",
    "past:method.classifier_init",
    "past:method.triplet_reading",
    "cluster_contrast:method.memory",
}


def _choice_fields() -> dict[str, tuple[str, ...]]:
    out = {}
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        if dataclasses.is_dataclass(hints[f.name]):
            for k, tp in typing.get_type_hints(hints[f.name]).items():
                if typing.get_origin(tp) is typing.Literal:
                    out[f"{f.name}.{k}"] = typing.get_args(tp)
    for name in METHOD_OPTIONS.names():
        for k, tp in typing.get_type_hints(METHOD_OPTIONS.get(name)).items():
            if typing.get_origin(tp) is typing.Literal:
                out[f"{name}:method.{k}"] = typing.get_args(tp)
    return out


def test_every_choice_field_is_typed_with_its_values():
    assert set(_choice_fields()) == CHOICE_KEYS


def _override(key: str, value: str) -> list[str]:
    if ":" in key:
        method, key = key.split(":")
        return [f"method.name={method}", f"{key}={value}"]
    return [f"{key}={value}"]


@pytest.mark.parametrize("key", sorted(CHOICE_KEYS))
def test_a_bad_choice_is_refused_when_loaded_with_a_suggestion(key):
    choices = _choice_fields()[key]
    typo = choices[-1][:-1] + "x"  # one letter off the last valid value
    with pytest.raises(ConfigError) as err:
        load_config(None, _override(key, typo))
    text = str(err.value)
    assert key.split(":")[-1] in text and repr(typo) in text
    assert all(repr(c) in text for c in choices)
    assert f"Did you mean {choices[-1]!r}?" in text
    # a valid value loads; one that differs only in case is read as that value
    dotted = key.split(":")[-1]
    for value in (choices[-1], choices[-1].upper()):
        cfg = load_config(None, _override(key, value))
        section, name = dotted.split(".")
        assert getattr(getattr(cfg, section), name) == choices[-1]


def test_a_bad_choice_stops_adapt_before_anything_runs(capsys):
    args = ["adapt", "--config", "configs/past/base.yaml", "pseudo.method=hdbscn"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "pseudo.method" in err and "Did you mean 'hdbscan'?" in err


ADAPT_PRESETS = sorted(
    str(p.relative_to(PACKAGE_CONFIG_DIR))
    for p in PACKAGE_CONFIG_DIR.rglob("*.yaml")
    if p.parent.name in ("msplr", "past", "cluster_contrast") or p.name == "msplr.yaml"
)


@pytest.mark.parametrize("rel", ADAPT_PRESETS)
def test_every_adaptation_preset_loads_for_adapt(rel):
    cfg = load_config(rel, command="adapt")
    method_class(cfg.method.name).validate(cfg)


@pytest.mark.parametrize(
    "override, hint",
    [
        ("train.epochs=5", "adapt.epochs_per_step"),
        ("train.keep=best", "adapt.select"),
        ("train.eval_every=1", "adapt.max_steps"),
        ("train.checkpoint_every=5", "after every epoch"),
    ],
)
def test_adapt_refuses_source_training_keys_away_from_their_default(override, hint):
    for preset in ("msplr/market1501_to_dukemtmc_cpu.yaml", "past/base.yaml"):
        with pytest.raises(ConfigError) as err:
            load_config(preset, [override], command="adapt")
        key = override.split("=")[0]
        assert f"{override}: `adaptreid adapt` does not read it" in str(err.value)
        assert hint in str(err.value), key
    # the same key at its default (as base/recipe.yaml restates train.epochs) is fine, and
    # `adaptreid train` reads it
    load_config("msplr/market1501_to_dukemtmc_cpu.yaml", ["train.epochs=90"], command="adapt")
    load_config("source/base.yaml", [override], command="train")


PAST_UNREAD = [
    ("loss.soft_margin=true", "loss.margin"),
    ("pseudo.eps=0.5", "only DBSCAN"),
    ("pseudo.min_samples=5", "only DBSCAN"),
    ("pseudo.auto_eps=true", "only DBSCAN"),
    ("pseudo.kmeans_k=751", "only k-means"),
    ("pseudo.min_size=2", "pseudo.select"),
    ("pseudo.min_cameras=1", "pseudo.select"),
]


@pytest.mark.parametrize("override, why", PAST_UNREAD)
def test_past_refuses_what_it_would_not_read(override, why):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as err:
        load_config("past/market1501_to_dukemtmc_cpu.yaml", [override], command="adapt")
    assert f"{key}: past does not read it here" in str(err.value) and why in str(err.value)
    # the loop refuses it too (a config built without the command check)
    with pytest.raises(ConfigError, match=key):
        method_class("past").validate(load_config("past/base.yaml", [override]))
    # MSPLR reads them all (DBSCAN, selection, its triplet loss)
    load_config("msplr/base.yaml", [override], command="adapt")


@pytest.mark.parametrize(
    "overrides",
    [
        ["pseudo.method=dbscan", "pseudo.eps=0.5", "pseudo.min_samples=5", "pseudo.auto_eps=true"],
        ["pseudo.method=kmeans", "pseudo.kmeans_k=751"],  # Table 2's k-means row
        ["pseudo.select=true", "pseudo.min_size=2", "pseudo.min_cameras=1"],
        ["pseudo.eps=0.42", "pseudo.min_size=4", "loss.soft_margin=false"],  # the defaults
    ],
)
def test_past_accepts_them_where_it_reads_them(overrides):
    cfg = load_config("past/market1501_to_dukemtmc_cpu.yaml", overrides, command="adapt")
    method_class("past").validate(cfg)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.head_options.parts=eanett", "eanett"),
        ("model.head_options.classifer=joint", "classifer"),
        ("model.backbone=resnet5O", "resnet5O"),
    ],
)
def test_past_checks_its_new_head_before_the_run(override, message):
    """PAST builds its PCB head at iteration 1, after step 0: its settings are checked first."""
    with pytest.raises(ConfigError, match=message):
        method_class("past").validate(load_config("past/base.yaml", [override]))
