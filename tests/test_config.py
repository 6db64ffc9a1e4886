import pytest

from adaptreid.config import Config, config_from_saved, load_config, save_config, to_dict
from adaptreid.errors import ConfigError


def test_defaults_and_overrides():
    cfg = load_config(
        None,
        [
            "train.epochs=5",
            "optim.lr=3.5e-4",
            "model.pretrained=null",
            "optim.milestones=[3, 4]",
            "data.flip=false",
        ],
    )
    assert isinstance(cfg, Config)
    assert cfg.train.epochs == 5
    assert cfg.optim.lr == pytest.approx(3.5e-4)
    assert cfg.model.pretrained is None
    assert cfg.optim.milestones == [3, 4]
    assert cfg.data.flip is False
    assert cfg.loss.center_weight == pytest.approx(0.005)  # MSPLR eq. 5 default


def test_base_inheritance_and_deep_merge(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 90\n  eval_every: 10\nseed: 3\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "child.yaml").write_text("_base_: ../base.yaml\ntrain:\n  epochs: 12\n")
    cfg = load_config(sub / "child.yaml", ["seed=7"])
    assert cfg.train.epochs == 12
    assert cfg.train.eval_every == 10  # kept from the base, not reset to the default
    assert cfg.seed == 7


def test_inheritance_loop_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "Did you mean 'train.epochs'"),
        ("optim.lrr=0.1", "Did you mean 'optim.lr'"),
        ("train.epochs=abc", "expects an integer"),
        ("data.flip=1", "expects true/false"),
        ("optim.milestones=5", "expects a list"),
        ("train.epochs", "key.sub=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_unknown_key_in_file_names_closest(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  backbon: resnet50\n")
    with pytest.raises(ConfigError, match="model.backbon.*model.backbone"):
        load_config(f)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_round_trip(tmp_path):
    cfg = load_config(None, ["name=x", "optim.milestones=[1]"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert config_from_saved(to_dict(cfg)) == cfg
