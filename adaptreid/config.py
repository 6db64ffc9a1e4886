"""Typed configuration: dataclasses, YAML presets with inheritance, dotted overrides.

A config file is YAML whose keys mirror the dataclasses below. ``_base_: other.yaml`` (a path
relative to the file, or a list of them) is loaded first and deep-merged under the file, as in
fast-reid. Command-line overrides are ``key.sub=value`` pairs whose value is parsed as YAML
(``train.epochs=5``, ``model.pretrained=null``, ``optim.milestones=[40,70]``).

Every key is checked: an unknown key is an error naming the closest valid key, and every value
is checked against its field's type, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

PACKAGE_CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class DataConfig:
    """Datasets and input pipeline."""

    source: str = ""
    """Registered name of the labelled source dataset (``adaptreid data list``)."""
    source_root: str = ""
    target: str = ""
    """Registered name of the unlabelled target dataset (adaptation) or of the test set."""
    target_root: str = ""
    height: int = 256
    width: int = 128
    num_instances: int = 4
    """K of the P x K sampler (images per identity in a batch)."""
    batch_size: int = 64
    """P x K; P = batch_size // num_instances."""
    test_batch_size: int = 128
    num_workers: int = 2
    flip: bool = True
    pad: int = 10
    random_erasing: bool = True
    color_change: bool = False
    """MSPLR section 3.6.1: brightness +-20% or contrast +-15%."""
    allow_absolute_paths: bool = False
    """CSV manifests only: allow paths that leave the manifest's folder."""
    source_options: dict[str, Any] = field(default_factory=dict)
    """Extra arguments of the source dataset's factory, e.g. ``{preset: tiny}`` for
    ``synthetic-source`` (see ``adaptreid data list`` / the dataset's docstring)."""
    target_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    backbone: str = "resnet50_ibn_a"
    last_stride: int = 1
    pooling: str = "avg"
    embedding_dim: int = 0
    neck_feat: str = "after"
    pretrained: str | None = None
    """Local weight file (torchvision / official IBN-Net key layout), or null."""
    head: str = "bnneck"
    """bnneck | pcb (PAST section 3.1: p stripes, ``embedding_dim`` per part, 256 if 0)."""
    head_options: dict[str, Any] = field(default_factory=dict)
    """Extra head arguments, e.g. ``{num_parts: 9}`` for pcb."""


@dataclass
class LossConfig:
    """Weights of L = w_tri L_tri + w_id L_ID + w_c L_c (MSPLR eq. 5: 1, 1, 0.005)."""

    triplet_weight: float = 1.0
    margin: float = 0.3
    soft_margin: bool = False
    ce_weight: float = 1.0
    label_smoothing: float = 0.1
    center_weight: float = 0.005
    center_lr: float = 0.5
    rtl_weight: float = 0.0
    """> 0 adds ``rtl_weight * L_RTL`` (PAST eq. 4, eta = ``past.eta``) to MSPLR's loss."""


@dataclass
class OptimConfig:
    name: str = "adam"
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: int = 10
    warmup_factor: float = 0.1
    milestones: list[int] = field(default_factory=lambda: [40, 70])
    gamma: float = 0.1
    head_lr_mult: float = 1.0
    """Learning rate of the head (BNNeck, classifier) relative to ``lr``."""


@dataclass
class TrainConfig:
    epochs: int = 90
    iters_per_epoch: int = 0
    """0: one pass of the P x K sampler per epoch; >0 caps the batches per epoch."""
    eval_every: int = 10
    """Evaluate (and keep the best checkpoint) every N epochs; 0 only at the end."""
    amp: str = "none"
    """none | bf16 | fp16 (fp16 on CUDA only)."""
    channels_last: bool = False
    freeze_epochs: int = 0
    """Train only the head for the first N epochs (MSPLR section 3.6.2 uses 20)."""
    log_every: int = 20
    checkpoint_every: int = 1
    tensorboard: bool = False
    """Also write every metric record to TensorBoard (``runs/<name>/tb``; needs the
    ``tensorboard`` package). metrics.jsonl is always written."""


@dataclass
class EvalConfig:
    metric: str = "euclidean"
    flip: bool = False
    rerank: bool = False
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3


@dataclass
class PseudoConfig:
    """Pseudo-label generation (``adaptreid/pseudo``): MSPLR sections 3.3-3.5, PAST eq. 1-2."""

    camera_norm: bool = True
    """MSPLR eq. 4: per-camera z-score of the target features before clustering (CN)."""
    method: str = "dbscan"
    """dbscan | kmeans | hdbscan"""
    distance: str = "euclidean"
    """euclidean (on the normalised features) | jaccard (k-reciprocal, Zhong et al. 2017)"""
    eps: float = 0.42
    """DBSCAN radius (MSPLR: 0.42 with Market-1501 as target, 0.35 with DukeMTMC)."""
    auto_eps: bool = False
    """Choose eps at every step by the label-free sweep of ``adaptreid cluster``
    (``pseudo.labels.auto_eps``) instead of using ``eps``."""
    min_samples: int = 4
    """DBSCAN's core-point size (MSPLR: 4); HDBSCAN's min_samples (PAST's S_min, 10)."""
    kmeans_k: int = 0
    """k-means clusters; 0 means N // 15 (MSPLR eq. 1)."""
    min_cluster_size: int = 4
    """HDBSCAN's smallest cluster (PAST: 5, the library default its released code keeps)."""
    k1: int = 20
    k2: int = 6
    select: bool = True
    """Cluster selection (MSPLR section 3.4); the two rules below can be switched singly."""
    min_size: int = 4
    """Keep clusters with at least this many images (the K of P x K)."""
    min_cameras: int = 2
    enforce_size: bool = True
    enforce_cameras: bool = True


@dataclass
class AdaptConfig:
    """The progressive-learning loop shared by the adaptation methods."""

    init_checkpoint: str = ""
    """Source-trained checkpoint to adapt (``adaptreid train`` output)."""
    max_steps: int = 10
    """Pseudo-label refinement steps; 1 = a single round (Table 3 "+DA" without "+PL")."""
    patience: int = 3
    """Stop after this many steps without a better target mAP (label-free runs: never)."""
    epochs_per_step: int = 30
    extract_flip: bool = False


@dataclass
class PASTConfig:
    """PAST (seed 003): Algorithm 1 and section 3.1. ``adapt.max_steps`` is I_max (4),
    ``pseudo.min_samples`` is HDBSCAN's S_min (10), ``pseudo.k1`` / ``k2`` the
    k-reciprocal encoding of eq. 1, ``loss.margin`` the m of eq. 3-4 (0.3), ``optim`` the SGD
    (momentum 0.9, weight decay 5e-4). Table 1's rows are ``use_ctl`` / ``use_rtl`` /
    ``use_promoting``."""

    conservative_epochs: int = 40
    """Epochs (passes of the P x K sampler over T_U) of each conservative stage. Not given in
    the paper; 40 is the authors' released training script."""
    promoting_epochs: int = 40
    use_ctl: bool = True
    """Clustering-based triplet loss, eq. 3."""
    use_rtl: bool = True
    """Ranking-based triplet loss, eq. 4."""
    use_promoting: bool = True
    """Promoting stage (eq. 6-7); off = the "C" rows of Table 1."""
    eta: int = 20
    """RTL: positives from ranks 1..eta, negatives from eta+1..2 eta (appendix, Table 4)."""
    lambda_ctl: float = 0.5
    """lambda of eq. 5, L_C = L_RTL + lambda L_CTL (section 3.4)."""
    lr_trunk_conservative: float = 1.0e-4
    lr_embedding_conservative: float = 2.0e-4
    lr_classifier_promoting: float = 1.0e-3
    lr_rest_promoting: float = 5.0e-5
    lr_decay_after: int = 3
    """All learning rates x ``lr_decay`` for iterations > this (0: never)."""
    lr_decay: float = 0.1
    classifier_init: str = "normalized"
    """Eq. 7: cluster means of the per-part L2-normalised features (normalized), of the raw
    features (raw), or a random classifier (random; an ablation)."""
    eval_after_conservative: bool = False
    """Also evaluate on the target after each conservative stage (logged in that stage's
    last epoch record as ``conservative_mAP`` ...)."""


@dataclass
class Config:
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    device: str = "auto"
    """auto | cpu | cuda | cuda:N"""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method: str = "msplr"
    """Adaptation recipe for ``adaptreid adapt``: msplr | past."""
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    past: PASTConfig = field(default_factory=PASTConfig)


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Build a :class:`Config` from a YAML file (with ``_base_`` inheritance) and overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _load_yaml_tree(resolve_config_path(path), seen=())
    for item in overrides or []:
        key, value = _parse_override(item)
        _set_dotted(raw, key, value)
    return from_dict(Config, raw)


def resolve_config_path(path: str | Path) -> Path:
    """A config path as given, or else relative to the shipped ``configs/`` folder."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = PACKAGE_CONFIG_DIR / p
    if shipped.is_file():
        return shipped
    hint = ""
    if PACKAGE_CONFIG_DIR.is_dir():
        names = sorted(
            str(f.relative_to(PACKAGE_CONFIG_DIR)) for f in PACKAGE_CONFIG_DIR.rglob("*.yaml")
        )
        close = difflib.get_close_matches(str(path), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else f" Presets: {', '.join(names)}"
    raise ConfigError(f"config file {str(path)!r} not found.{hint}")


def _load_yaml_tree(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: _base_ inheritance loops back to itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    merged: dict[str, Any] = {}
    for base in bases:
        merged = _deep_merge(merged, _load_yaml_tree(path.parent / base, seen + (path,)))
    return _deep_merge(merged, data)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key!r}: {p!r} is a value, not a section")
        d = nxt
    d[parts[-1]] = value


def valid_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """All dotted keys of a config dataclass."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        keys.append(name)
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(valid_keys(hints[f.name], name + "."))
    return keys


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, checking every key and value type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = prefix + key
        if key not in names:
            close = difflib.get_close_matches(full, valid_keys(Config), n=1, cutoff=0.5)
            if not close:
                close = difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.5)
                close = [prefix + close[0]] if close else []
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {full!r}.{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value or {}, full + ".")
        else:
            kwargs[key] = _check_value(full, tp, value)
    return cls(**kwargs)


def _check_value(key: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_value(key, a, value)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key {key!r} expects a list, got {value!r}")
        return [_check_value(f"{key}[{i}]", inner, v) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} expects an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 3.5e-4 as a string (no dot before 'e')
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r} expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key {key!r} expects a string, got {value!r}")
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_from_saved(data: dict[str, Any], cls: type = Config) -> Any:
    """Rebuild a config from :func:`to_dict` output (a run folder's ``config.yaml``)."""
    return from_dict(cls, data)
