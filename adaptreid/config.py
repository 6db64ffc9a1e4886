"""Typed configuration: dataclasses, YAML presets with inheritance, dotted overrides.

A config file is YAML whose keys mirror the dataclasses below. ``_base_: other.yaml`` (a path
relative to the file, or a list of them) is loaded first and deep-merged under the file, as in
fast-reid. Command-line overrides are ``key.sub=value`` pairs whose value is parsed as YAML
(``train.epochs=5``, ``model.pretrained=null``, ``optim.milestones=[40,70]``).

Every key is checked: an unknown key is an error naming the closest valid key, and every value
is checked against its field's type, so a typo never silently falls back to a default. A field
with a fixed set of values is a ``Literal[...]`` (here and in the methods' options): another
value is an error at load time naming the key, the valid values and the closest one.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .config_files import PACKAGE_CONFIG_DIR as PACKAGE_CONFIG_DIR  # re-exported
from .config_files import (
    _check_value,
    _load_yaml_tree,
    _parse_override,
    _set_dotted,
    resolve_config_path,
)
from .errors import ConfigError
from .method_options import MethodOptions
from .registry import METHOD_OPTIONS, METHODS

#: ``adapt.select``: how the kept model is chosen (README "Which step's model you get").
SelectRule = Literal["holdout", "agreement", "snd", "cross_camera", "last", "target_map"]
SELECT_RULES: tuple[str, ...] = typing.get_args(SelectRule)


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
    bad_images: Literal["auto", "error", "skip"] = "auto"
    """error | skip | auto. What to do with an image that cannot be read (corrupt, truncated,
    empty, not an image): stop with an error naming the file, or drop it once, count it, log
    it and list it in the run report. ``auto``: skip for the unlabelled target of ``adapt``
    (a long run should not die on one bad file of 100k), error for a labelled source."""
    image_cache: Literal["disk", "none"] = "disk"
    """disk | none. ``disk``: each image is decoded once per run and kept at the input size
    (after the resize, before flip, augmentation and normalisation) in a memory-mapped file,
    which feature extraction, evaluation and training read from then on (the same tensors as
    decoding). ``none``: every pass decodes the image files."""
    image_cache_dir: str = ""
    """Folder of the image cache; empty: ``image_cache/`` in the run folder, removed when the
    run finishes (kept by a run that stops early, for ``--resume``). A folder of your own is
    kept, and runs that name the same folder share it (keyed by file and input size)."""
    source_options: dict[str, Any] = field(default_factory=dict)
    """Extra arguments of the source dataset's factory, e.g. ``{preset: tiny}`` for
    ``synthetic-source`` (see ``adaptreid data list`` / the dataset's docstring)."""
    target_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    backbone: str = "resnet50_ibn_a"
    last_stride: int = 1
    pooling: Literal["avg", "max", "gem"] = "avg"  # the PCB head takes avg | max
    embedding_dim: int = 0
    neck_feat: Literal["after", "before"] = "after"
    pretrained: str | None = None
    """Local weight file (torchvision / official IBN-Net key layout), or null."""
    allow_partial_weights: bool = False
    """Load ``pretrained`` even if it leaves some backbone tensors at their initial values
    (another network's file); off, that is an error naming the file and the tensors."""
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
    """epsilon of the label-smoothed cross-entropy: the bag-of-tricks baseline's value (MSPLR
    reference [21]); MSPLR itself gives none."""
    center_weight: float = 0.005
    """MSPLR eq. 5."""
    center_lr: float = 0.5
    """SGD learning rate of the centres: the bag-of-tricks baseline's (MSPLR gives none)."""
    rtl_weight: float = 0.0
    """> 0 adds ``rtl_weight * L_RTL`` (PAST eq. 4, eta = ``method.rtl_eta``) to MSPLR's loss."""


@dataclass
class OptimConfig:
    name: Literal["adam", "adamw", "sgd"] = "adam"
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
    amp: Literal["none", "fp32", "bf16", "fp16", "auto"] = "none"
    """none (= fp32) | bf16 | fp16 (fp16 on CUDA only) | auto: bf16 + channels_last where a short
    probe on this machine finds it faster than fp32 (cached per machine, model and input size; the
    choice is logged), else fp32. Also used for feature extraction and evaluation."""
    channels_last: bool = False
    """channels_last memory layout (ignored with ``amp: auto``, which chooses it)."""
    compile: Literal["never", "always", "auto"] = "never"
    """``torch.compile`` the backbone (inductor), for training and for extraction: ``auto``
    keeps it only where a probe on this machine measures it faster than eager (cached like
    ``amp: auto``; :mod:`adaptreid.runtime.compile`). Not on/off: YAML reads those as
    booleans."""
    freeze_epochs: int = 0
    """Train only the head for the first N epochs (MSPLR section 3.6.2 uses 20; see
    ``method.freeze`` for where they sit in the schedule)."""
    keep: Literal["last", "best"] = "last"
    """Source training: which model ``best.pt`` is. ``last``: the model after the last epoch
    (MSPLR section 3.6.1 trains 90 epochs and adapts that model); ``best``: the epoch with the
    best source-test mAP among those evaluated (``eval_every``)."""
    checkpoint_every: int = 1
    tensorboard: bool = False
    """Also write every metric record to TensorBoard (``runs/<name>/tb``; needs the
    ``tensorboard`` package). metrics.jsonl is always written."""


@dataclass
class EvalConfig:
    metric: Literal["euclidean", "sqeuclidean", "cosine"] = "euclidean"
    steps: Literal["every", "final"] = "every"
    """Adaptation: evaluate on the target's query / gallery at step 0 and after every step
    (``every``), or only ``best.pt`` at the end (``final``: a user without target test
    labels has nothing to evaluate; saves an evaluation per step; ``adapt.select:
    target_map`` needs ``every``)."""
    flip: bool = False
    rerank: bool = False
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3


@dataclass
class PseudoConfig:
    """Pseudo-label generation (``adaptreid/pseudo``): MSPLR sections 3.3-3.5, PAST eq. 1-2."""

    camera_norm: bool = True
    """MSPLR eq. 4: per-camera z-score of the target features before clustering (CN). Switched
    off, with a warning, on a target whose camera ids are unknown."""
    l2_after: bool = True
    """L2-normalise the rows again after eq. 4 (``adaptreid.pseudo.camera_norm``). Eq. 4 alone
    leaves features whose distances grow with sqrt(D) (about 64 for D = 2048), on which the
    paper's eps of 0.35 / 0.42 is no radius at all; the eps only makes sense on unit rows.
    See BENCHMARKS.md, "MSPLR clustering space", for the measured portions kept."""
    method: Literal["dbscan", "kmeans", "hdbscan"] = "dbscan"
    distance: Literal["euclidean", "cosine", "jaccard"] = "euclidean"
    """euclidean (on the normalised features) | cosine | jaccard (k-reciprocal, Zhong et al.
    2017)"""
    eps: float = 0.42
    """DBSCAN radius (MSPLR: 0.42 with Market-1501 as target, 0.35 with DukeMTMC)."""
    auto_eps: bool = False
    """Choose eps at every step by the label-free sweep of ``adaptreid cluster``
    (``pseudo.labels.auto_eps``) instead of using ``eps``."""
    max_kept_growth: float = 0.0
    """With ``auto_eps``: the portion of the images kept in selected clusters may grow by at
    most this much a step (0.1: 10 points; 0: no cap). BENCHMARKS.md, "On small targets"."""
    kept_never_shrinks: bool = False
    """With ``auto_eps``: only the eps that keep at least the last step's portion of the images
    are candidates (none keeping that many: the one keeping the most), so that the training set
    does not shrink from step to step while the model is meant to improve progressively (MSPLR
    section 3.2), instead of swinging with the sweep's score. The giant-cluster guard still
    comes first. BENCHMARKS.md, "Cluster contrast with the field's camera handling"."""
    giant_factor: float = 5.0
    """With ``auto_eps``: an eps whose largest cluster holds more than this many times the
    median cluster's images counts as DBSCAN chaining people together and is not a candidate
    (the giant-cluster guard of ``adaptreid.pseudo.labels.recommend_eps``). Must be > 1."""

    min_samples: int = 4
    """DBSCAN's core-point size, the point itself counted (MSPLR: 4). HDBSCAN: see
    ``s_min`` / ``s_min_reading``."""
    kmeans_k: int = 0
    """k-means clusters; 0 means N // 15 (MSPLR eq. 1)."""
    s_min: int = 10
    """PAST's S_min (section 3.4: 10), "the minimal samples in each cluster" of HDBSCAN; its
    meaning is ``s_min_reading``."""
    s_min_reading: Literal["min_cluster_size", "released_code"] = "min_cluster_size"
    """How S_min enters HDBSCAN. ``min_cluster_size``: the paper's words, a minimum cluster
    size (HDBSCAN's min_samples then defaults to the same number, counting the point itself).
    ``released_code``: the authors' released code, which passes S_min as the ``hdbscan``
    package's ``min_samples`` and keeps its ``min_cluster_size`` default of 5; that package
    does not count a point in its own neighbourhood while scikit-learn does, so S_min becomes
    scikit-learn's ``min_samples = S_min + 1``."""
    k1: int = 20
    k2: int = 6
    neighbors: Literal["exact", "approximate", "auto"] = "auto"
    """How the Jaccard distance finds each image's k1 + 1 nearest neighbours (Zhong et al.
    2017, N(p, k1)): ``exact`` (blocked products over all pairs, O(N^2 d)) | ``approximate``
    (inverted lists, each list's rows searched against its nearest lists' with exact
    distances; needs the optional faiss: ``pip install 'adaptreid[faiss]'``) | ``auto``
    (default: approximate from ``adaptreid.pseudo.settings.APPROX_MIN_N`` = 200,000 images up
    when faiss is installed, else exact; below it, exact). Measured on 2048-d synthetic
    features at 200,000 images, 2 cores: the whole step 5.9x shorter, DBSCAN labels equal to
    the exact path's (ARI 0.99999), HDBSCAN's less so (ARI 0.74; BENCHMARKS.md,
    "Approximate neighbours")."""
    neighbors_nprobe: int = 0
    """``approximate``: lists each list's rows are searched against (0: the default,
    ``adaptreid.pseudo.settings.DEFAULT_NPROBE``); more is slower and closer to exact."""
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
    select: SelectRule = "holdout"
    """Which step's model is ``best.pt`` (reported, exported). Label-free: ``holdout`` (the
    default; retrieval on clusters held back from training, ``adapt.holdout``), ``agreement``
    (grows with training whatever the accuracy; the benchmark presets keep it), ``snd``,
    ``cross_camera`` (:mod:`adaptreid.evaluation.label_free`); ``last``; ``target_map``: the
    best target test mAP as the MSPLR paper's Figure 2, an oracle (test labels; every report
    names it so). README "Which step's model you get" compares them."""
    patience: int = 2
    """Stop after this many steps without a better score of ``select`` (0: never; ``last``:
    never): a run that degrades ends early and keeps its best model."""
    holdout: float = 0.15
    """Portion of the first pseudo-labels' clusters (those spanning two cameras or more) held
    back from training at every step, to score each model by retrieval on them (the
    ``holdout`` rule of ``select``; 0: none, which ``select: holdout`` refuses)."""
    keep_steps: bool = False
    """Also keep every step's model (and the labels it was trained on) as
    ``steps/step_<s>.pt``, to compare steps afterwards."""
    epochs_per_step: int = 30
    """Training epochs of each step (MSPLR, cluster contrast; PAST has its own per stage)."""
    extract_flip: bool = False


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
    method: Any = field(default_factory=lambda: method_options("msplr"))
    """The adaptation method of ``adaptreid adapt`` and its options: a mapping whose ``name``
    picks the method (msplr | past | cluster_contrast) and whose other keys are checked
    against that method's own options dataclass (:mod:`adaptreid.method_options`). ``method: past``
    alone means the method with its default options."""
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)


# --------------------------------------------------------------------------- loading


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    command: str | None = None,
) -> Config:
    """Build a :class:`Config` from a YAML file (with ``_base_`` inheritance) and overrides.

    With ``command`` (``"train"``, ``"adapt"``), keys that the command would not read are
    refused with a message that says why (:func:`check_command_keys`): a key that does
    nothing must not look as if it did."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _load_yaml_tree(resolve_config_path(path), seen=())
    for item in overrides or []:
        key, value = _parse_override(item)
        _set_dotted(raw, key, value)
    cfg = from_dict(Config, raw)
    if command is not None:
        check_command_keys(cfg, given_keys(raw), command)
    return cfg


# --------------------------------------------------------------------------- method section


def method_options(name: str, data: dict[str, Any] | None = None) -> MethodOptions:
    """The options dataclass of method ``name`` filled from ``data`` (checked)."""
    cls = METHOD_OPTIONS.get(name)
    return from_dict(cls, {**(data or {}), "name": str(name).lower()}, "method.")


def _method_section(value: Any) -> MethodOptions:
    if isinstance(value, MethodOptions):
        return value
    if isinstance(value, str):
        return method_options(value)
    if not isinstance(value, dict):
        raise ConfigError(f"config key 'method' expects a method name or a mapping, got {value!r}")
    data = dict(value)
    return method_options(str(data.pop("name", "msplr")), data)


def given_keys(raw: dict[str, Any], cls: type = None, prefix: str = "") -> set[str]:
    """The dotted leaf keys a config file chain and its overrides set explicitly."""
    cls = Config if cls is None else cls
    hints = typing.get_type_hints(cls)
    out: set[str] = set()
    for key, value in raw.items():
        full = prefix + key
        tp = hints.get(key)
        if key == "method" and cls is Config and isinstance(value, dict):
            out |= {f"method.{k}" for k in value}
        elif tp is not None and dataclasses.is_dataclass(tp) and isinstance(value, dict):
            out |= given_keys(value, tp, full + ".")
        else:
            out.add(full)
    return out


#: Keys ``adaptreid train`` (supervised source training) never reads, and why.
_TRAIN_IGNORES = {
    "adapt.": "adaptation settings are read by `adaptreid adapt`, not by `train`",
    "pseudo.": "pseudo-label settings are read by `adaptreid adapt` / `cluster`, not by `train`",
    "method.": "the adaptation method is chosen by `adaptreid adapt`, not by `train`",
}


#: Source-training keys ``adaptreid adapt`` never reads, refused when set to another value than
#: the default (base/recipe.yaml, shared by source and adaptation presets, restates them).
_ADAPT_IGNORES = {
    "train.epochs": "a step trains adapt.epochs_per_step epochs, a PAST stage "
    "method.conservative_epochs / method.promoting_epochs; the steps are adapt.max_steps",
    "train.keep": "the kept model (best.pt) is chosen by adapt.select",
    "train.eval_every": "every step is evaluated; adapt.max_steps sets how many there are",
    "train.checkpoint_every": "an adaptation run writes a checkpoint after every epoch",
}


def non_default(cfg: Config, keys: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``{key: value}`` for the dotted ``keys`` whose value in ``cfg`` differs from the
    default (``method.*``: the defaults of ``cfg.method``'s own options)."""
    defaults = Config(method=type(cfg.method)())
    out = {}
    for key in keys:
        value = functools.reduce(getattr, key.split("."), cfg)
        if value != functools.reduce(getattr, key.split("."), defaults):
            out[key] = value
    return out


def check_command_keys(cfg: Config, given: set[str], command: str) -> None:
    """Refuse keys that ``command`` ignores, naming the key and the reason.

    * ``train`` ignores ``adapt.*``, ``pseudo.*`` and ``method.*``;
    * ``adapt`` ignores :data:`_ADAPT_IGNORES` and what the method does not read under this
      config (``AdaptationMethod.unread_keys``), both refused when not at their default; what
      the method never reads (``AdaptationMethod.ignored``), refused when given; and, with
      ``adapt.init_checkpoint``, ``model.*`` except ``AdaptationMethod.reads_model`` (its
      own head): the network comes from the checkpoint.
    """
    problems: list[str] = []
    if command == "train":
        for key in sorted(given):
            for prefix, why in _TRAIN_IGNORES.items():
                if key.startswith(prefix):
                    problems.append(f"{key}: {why}")
    elif command == "adapt":
        cls = registered_method(cfg.method.name)
        for key, value in non_default(cfg, tuple(_ADAPT_IGNORES)).items():
            problems.append(
                f"{key}={value}: `adaptreid adapt` does not read it ({_ADAPT_IGNORES[key]})"
            )
        for key, why in cls.unread_keys(cfg).items():
            problems.append(f"{key}: {cls.name} does not read it here ({why})")
        for key in sorted(given):
            why = next((w for k, w in cls.ignored.items() if key == k or key.startswith(k)), None)
            if why:
                problems.append(f"{key}: {cls.name} does not read it ({why})")
            elif (
                key.startswith("model.")
                and cfg.adapt.init_checkpoint
                and key not in cls.reads_model
                and key != "model.pretrained"
            ):
                problems.append(
                    f"{key}: the network is the one saved in adapt.init_checkpoint "
                    f"({cfg.adapt.init_checkpoint}), so model.* settings do nothing here; "
                    "to adapt another network, train a source model with it first "
                    "(`adaptreid train ... model.backbone=...`)"
                )
    if problems:
        raise ConfigError(
            f"`adaptreid {command}` refuses config keys it would ignore:\n  "
            + "\n  ".join(problems)
        )


def registered_method(name: str) -> Any:
    """The method class registered as ``name``, with a hint when the methods were not
    imported (``adaptreid.methods`` registers the built-in ones; the config layer never
    imports them)."""
    if name not in METHODS and name in METHOD_OPTIONS:
        raise ConfigError(
            f"adaptation method {name!r} has options but no registered method: import "
            "adaptreid.methods (the built-in methods) or your method's module first"
        )
    return METHODS.get(name)


def valid_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """All dotted keys of a config dataclass."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        keys.append(name)
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(valid_keys(hints[f.name], name + "."))
        elif cls is Config and f.name == "method":
            for m in METHOD_OPTIONS.names():
                keys.extend(
                    k for k in valid_keys(METHOD_OPTIONS.get(m), "method.") if k not in keys
                )
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
            pool = valid_keys(cls, prefix) if prefix == "method." else valid_keys(Config)
            close = difflib.get_close_matches(full, pool, n=1, cutoff=0.5)
            if not close:
                close = difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.5)
                close = [prefix + close[0]] if close else []
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {full!r}.{hint}")
        tp = hints[key]
        if cls is Config and key == "method":
            kwargs[key] = _method_section(value)
        elif dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value or {}, full + ".")
        else:
            kwargs[key] = _check_value(full, tp, value)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_from_saved(data: dict[str, Any], cls: type = Config) -> Any:
    """Rebuild a config from :func:`to_dict` output (a run folder's ``config.yaml``)."""
    return from_dict(cls, data)
