"""A built-in two-domain person re-ID dataset, drawn procedurally (no download).

``adaptreid demo`` needs a labelled *source* domain and an unlabelled *target* domain whose
cameras look unlike the source's, small enough to train and adapt on a laptop CPU in minutes.
This module draws one::

    >>> from adaptreid.data.synthetic import generate_synthetic_reid
    >>> generate_synthetic_reid("data/syn-src", SyntheticSpec(domain="source"))  # doctest: +SKIP
    >>> build_dataset("synthetic-target", "data/syn-tgt")            # doctest: +SKIP

The folder is Market-1501-style (``bounding_box_train/``, ``query/``, ``bounding_box_test/``;
names ``<pid:04d>_c<cam>s1_<frame:06d>_00.png``, camera 1-based in the name), so the
``market1501`` parser reads it too. A ``README.txt`` says how it was drawn and ``spec.json``
records the :class:`SyntheticSpec` (the marker that makes a folder "ours").

The model
---------
*Identity* (:class:`Identity`, drawn once per pid): skin tone; hair colour and length; shirt
colour, sleeve length and pattern (plain, horizontal / vertical stripes, checks, or a chest
print seen from the front only) with its colour; trousers, shorts or a skirt and their colour;
shoe colour; no bag, a shoulder bag (on one side) or a backpack (straps from the front, the
bag from the back); body height, width, head size and torso/leg ratio. Colours come from a
shared palette, weighted like real clothing (many dark trousers), with a small per-identity
shift, so identities are distinguishable but often confusable.

*Camera* (:class:`CameraStyle`, fixed per domain and camera): viewpoint (front or back view,
mirroring, shear, scale, vertical offset); a fixed background scene (wall and floor colours,
bricks / stripes / tiles / windows texture, low-frequency blotches, poles) of which each
image shows a random crop; lighting gain, per-channel colour cast, gamma and haze; box blur;
a lower sensor resolution (drawn small, then upsampled); sensor noise.

*Per image*: position, size and sway jitter, walking stride and arm swing, small colour and
brightness jitter, background crop and noise.

The two domains share the identity model (different people: disjoint random streams) but not
the cameras: *source* cameras are bright daylight cameras, sharp and full-resolution, whose
white balance and exposure vary a little (as Market-1501's do); *target* cameras are dimmer,
each with its own clear colour cast, blurred, low-resolution, over textured backgrounds.

The gap was tuned with a small CNN (4 conv blocks, 128-d, trained 12 epochs from scratch on
the source, no colour augmentation) on the ``demo`` preset: source rank-1 99.5%; direct
transfer to the target rank-1 28% / mAP 17% (57% / 41% after per-camera feature z-scoring);
k-means pseudo-labels on target features (3 rounds) raise it to 52% / 26%; a model trained
on the target's true labels reaches 95%. Raw 16x8 pixels (euclidean) give rank-1 13% on the
source and 4.5% on the target. ``camera_shift`` scales the gap: 0.5 is easy, 1.3 is hard
(direct transfer 3%), for that small CNN.

Determinism: each image is drawn from its own random stream seeded by ``(seed, domain, pid,
camera, frame)``, so a spec gives byte-identical PNG files whatever the generation order.
Speed: about 2-3 ms per 64x32 image on one CPU core (vectorised numpy drawing at 2x
supersampling, PNG writing): a ``demo`` domain (1,800 images, ~15 MB) takes about 5 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DatasetError
from .datasets import DATASETS, ReidDataset
from .folders import BBOX_FOLDERS, load_named_folders
from .synthetic_render import (
    CAMERAS,
    DOMAINS,
    SUPERSAMPLE,
    CameraStyle,
    Identity,
    camera_styles,
    draw_background,
    render_image,
    sample_identity,
)

__all__ = [
    "DOMAINS",
    "PRESETS",
    "CameraStyle",
    "Identity",
    "SyntheticSpec",
    "camera_styles",
    "generate_synthetic_reid",
    "render_image",
    "sample_identity",
]

GENERATOR = "adaptreid.data.synthetic"
#: Bump when the drawing changes: folders written by an older version are regenerated.
GENERATOR_VERSION = 1
MARKER = "spec.json"
README = "README.txt"
_FILE_RE = re.compile(r"^\d{4}_c\d+s1_\d{6}_00\.png$")

# ---------------------------------------------------------------------------------------------
# Spec


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Sizes are per domain; query = ``queries_per_id_per_camera`` images
    of every test identity in every camera, gallery = the other test images."""

    domain: str = "source"
    num_train_ids: int = 100
    num_test_ids: int = 50
    images_per_id_per_camera: int = 3
    num_cameras: int = 4
    height: int = 64
    width: int = 32
    seed: int = 0
    queries_per_id_per_camera: int = 1
    camera_shift: float = 1.0

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise DatasetError(
                f"synthetic: domain must be one of {', '.join(DOMAINS)}, got {self.domain!r}"
            )
        n_cams = len(CAMERAS[self.domain])
        checks = [
            ("num_train_ids", self.num_train_ids, 1, 4999),
            ("num_test_ids", self.num_test_ids, 1, 4999),
            ("num_cameras", self.num_cameras, 1, n_cams),
            ("images_per_id_per_camera", self.images_per_id_per_camera, 2, 999),
            ("queries_per_id_per_camera", self.queries_per_id_per_camera, 1, 998),
            ("height", self.height, 16, 1024),
            ("width", self.width, 8, 1024),
        ]
        for name, value, low, high in checks:
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise DatasetError(
                    f"synthetic: {name} must be an int in [{low}, {high}], got {value!r}"
                )
        if self.num_train_ids + self.num_test_ids > 9999:
            raise DatasetError("synthetic: num_train_ids + num_test_ids must be <= 9999")
        if self.queries_per_id_per_camera >= self.images_per_id_per_camera:
            raise DatasetError(
                "synthetic: queries_per_id_per_camera must be < images_per_id_per_camera "
                "(the rest of each identity's images form the gallery)"
            )
        shift = self.camera_shift
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not 0 <= shift <= 1.5:
            raise DatasetError(f"synthetic: camera_shift must be in [0, 1.5], got {shift!r}")
        object.__setattr__(self, "camera_shift", float(shift))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise DatasetError(f"synthetic: seed must be an int >= 0, got {self.seed!r}")

    @classmethod
    def preset(cls, name: str = "demo", **overrides: object) -> SyntheticSpec:
        """The spec of preset ``name`` (see :data:`PRESETS`) with ``overrides`` applied;
        ``None`` values are ignored."""
        if name not in PRESETS:
            raise DatasetError(
                f"synthetic: unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise DatasetError(f"synthetic: unknown spec field(s) {', '.join(unknown)}")
        values = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(**values)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def counts(self) -> dict[str, int]:
        """Images per split."""
        per_id = self.num_cameras * self.images_per_id_per_camera
        query = self.num_test_ids * self.num_cameras * self.queries_per_id_per_camera
        return {
            "train": self.num_train_ids * per_id,
            "query": query,
            "gallery": self.num_test_ids * per_id - query,
        }


#: Named sizes. ``demo``: per domain 100 train identities and 50 test identities, 4 cameras,
#: 3 images per identity and camera, 64x32: 1,200 train, 200 query and 400 gallery images.
#: ``tiny``: for tests (8 + 6 identities, 3 cameras, 32x16).
PRESETS: dict[str, dict[str, object]] = {
    "demo": {},
    "small": {"num_train_ids": 50, "num_test_ids": 30},
    "tiny": {
        "num_train_ids": 8,
        "num_test_ids": 6,
        "num_cameras": 3,
        "images_per_id_per_camera": 2,
        "height": 32,
        "width": 16,
    },
}


# ---------------------------------------------------------------------------------------------
# Writing a dataset folder


def _domain_index(domain: str) -> int:
    return DOMAINS.index(domain) + 1


def _file_name(pid: int, cam: int, frame: int) -> str:
    return f"{pid:04d}_c{cam + 1}s1_{frame:06d}_00.png"


def _readme(spec: SyntheticSpec) -> str:
    counts = spec.counts()
    cams = camera_styles(spec.domain, spec.camera_shift)[: spec.num_cameras]
    lines = [
        f"Synthetic person re-ID dataset ({spec.domain} domain), drawn by {GENERATOR}",
        f"(generator version {GENERATOR_VERSION}). Nothing here was downloaded: every image is",
        "a procedurally drawn pedestrian. Regenerate it with",
        "",
        "    from adaptreid.data.synthetic import SyntheticSpec, generate_synthetic_reid",
        f"    generate_synthetic_reid(out_dir, SyntheticSpec(**{spec.to_dict()!r}))",
        "",
        "Layout (Market-1501 style; the market1501 parser reads it too):",
        f"  bounding_box_train/  {counts['train']:>6,} images of {spec.num_train_ids} identities "
        f"(pids 1..{spec.num_train_ids})",
        f"  query/               {counts['query']:>6,} images of {spec.num_test_ids} identities "
        f"({spec.queries_per_id_per_camera} per identity and camera)",
        f"  bounding_box_test/   {counts['gallery']:>6,} images (the other test images)",
        "  names <pid:04d>_c<camera, 1-based>s1_<frame:06d>_00.png, "
        f"{spec.width}x{spec.height} pixels (w x h), PNG",
        "",
        "Identity: skin, hair colour and length, shirt colour / sleeves / pattern (plain,",
        "stripes, checks, chest print), trousers / shorts / skirt and colour, shoes, bag",
        "(none, shoulder bag, backpack), body height, width, head size, torso/leg ratio.",
        "Camera: view (front/back), mirroring, shear, scale, vertical offset, background scene,",
        "lighting gain, colour cast, gamma, haze, blur, sensor resolution, noise.",
        "Per image: position/size/sway jitter, stride, arm swing, colour and noise jitter.",
        "",
        "Cameras:",
    ]
    for k, cam in enumerate(cams, start=1):
        lines.append(
            f"  c{k}: {cam.name:<22} gain {cam.gain:.2f} cast {cam.cast} blur {cam.blur} "
            f"downsample x{cam.downsample:g} noise {cam.noise:g} background {cam.texture}"
        )
    if spec.domain == "target":
        lines += [
            "",
            "The train images carry their true pids in their names so that pseudo-label",
            "quality can be measured; unsupervised adaptation must not use them.",
        ]
    lines += [
        "",
        "spec.json marks this folder as generated: adaptreid regenerates it (deleting only",
        "the files it wrote) when the requested spec differs. Do not keep your own files here.",
        "",
    ]
    return "\n".join(lines)


def _marker(spec: SyntheticSpec) -> dict[str, object]:
    return {"generator": GENERATOR, "version": GENERATOR_VERSION, "spec": spec.to_dict()}


def _read_marker(folder: Path) -> dict[str, object] | None:
    """The marker of ``folder`` if it is one of ours, else ``None``."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("generator") != GENERATOR:
        return None
    return data


def _is_complete(folder: Path, spec: SyntheticSpec) -> bool:
    """``folder`` holds exactly what ``spec`` generates (marker and file counts)."""
    if _read_marker(folder) != _marker(spec):
        return False
    for split, sub in BBOX_FOLDERS.items():
        try:
            n = sum(1 for e in os.scandir(folder / sub) if _FILE_RE.match(e.name))
        except OSError:
            return False
        if n != spec.counts()[split]:
            return False
    return True


def _write(folder: Path, spec: SyntheticSpec) -> None:
    """Draw every image of ``spec`` into the (new, empty) ``folder``."""
    dom = _domain_index(spec.domain)
    cams = camera_styles(spec.domain, spec.camera_shift)[: spec.num_cameras]
    backgrounds = []
    for k, cam in enumerate(cams):
        lo_h = max(8, int(round(spec.height / cam.downsample)))
        lo_w = max(4, int(round(spec.width / cam.downsample)))
        rng = np.random.default_rng([spec.seed, dom, 0xCA, k])
        backgrounds.append(draw_background(cam, rng, lo_h * SUPERSAMPLE, lo_w * SUPERSAMPLE * 4))
    for sub in BBOX_FOLDERS.values():
        (folder / sub).mkdir(parents=True)
    n_train = spec.num_train_ids
    for pid in range(1, n_train + spec.num_test_ids + 1):
        ident = sample_identity(np.random.default_rng([spec.seed, dom, 0x1D, pid]))
        for k, cam in enumerate(cams):
            for frame in range(1, spec.images_per_id_per_camera + 1):
                rng = np.random.default_rng([spec.seed, dom, pid, k, frame])
                pixels = render_image(ident, cam, backgrounds[k], rng, spec.height, spec.width)
                if pid <= n_train:
                    sub = BBOX_FOLDERS["train"]
                elif frame <= spec.queries_per_id_per_camera:
                    sub = BBOX_FOLDERS["query"]
                else:
                    sub = BBOX_FOLDERS["gallery"]
                Image.fromarray(pixels, "RGB").save(
                    folder / sub / _file_name(pid, k, frame), compress_level=1
                )
    (folder / README).write_text(_readme(spec), encoding="utf-8")
    (folder / MARKER).write_text(json.dumps(_marker(spec), indent=2) + "\n", encoding="utf-8")


def _remove_ours(folder: Path) -> None:
    """Delete what a previous generation wrote into ``folder`` (it has our marker); refuse
    (DatasetError) when anything else is there, and delete nothing in that case."""
    foreign = []
    for entry in folder.iterdir():
        if entry.name in (MARKER, README):
            continue
        if entry.name in BBOX_FOLDERS.values() and entry.is_dir() and not entry.is_symlink():
            foreign += [p for p in entry.iterdir() if not (_FILE_RE.match(p.name) and p.is_file())]
        else:
            foreign.append(entry)
    if foreign:
        listed = ", ".join(str(p) for p in sorted(foreign)[:5])
        raise DatasetError(
            f"{folder} holds a synthetic dataset of another spec but also files adaptreid did "
            f"not write ({listed}{', ...' if len(foreign) > 5 else ''}); move them away or "
            "choose another folder"
        )
    for sub in BBOX_FOLDERS.values():
        if (folder / sub).is_dir():
            shutil.rmtree(folder / sub)
    (folder / README).unlink(missing_ok=True)
    (folder / MARKER).unlink()


def generate_synthetic_reid(
    out_dir: str | os.PathLike[str], spec: SyntheticSpec | None = None
) -> Path:
    """Make ``out_dir`` hold the synthetic dataset ``spec`` says (its domain, sizes and seed;
    default: the ``demo`` preset of the source domain) and return its path. A preset with
    some sizes changed is ``SyntheticSpec.preset("tiny", domain="target", seed=3)``.

    The folder is

    - kept as is when it already holds exactly this spec (``spec.json`` and file counts);
    - created (with its parents) when missing, filled when empty;
    - regenerated when it holds a synthetic dataset of another spec (its ``spec.json`` is
      ours): only the files the generator wrote are deleted;
    - refused with :class:`DatasetError` when it holds anything else.

    The images are drawn into a temporary sibling folder that is then renamed into place, so
    a reader never sees a half-written dataset and concurrent calls are safe.
    """
    spec = SyntheticSpec.preset("demo") if spec is None else spec
    return _ensure(Path(os.path.abspath(os.path.expanduser(os.fspath(out_dir)))), spec)


def _ensure(out: Path, spec: SyntheticSpec) -> Path:
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} is not a folder")
    if out.is_dir():
        if _is_complete(out, spec):
            return out
        if _read_marker(out) is not None:
            _remove_ours(out)
        elif any(out.iterdir()):
            raise DatasetError(
                f"{out} is not empty and holds no synthetic dataset ({MARKER} missing); "
                "pass an empty or new folder so that no data of yours is overwritten"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:12]}"
    try:
        tmp.mkdir()
        _write(tmp, spec)
        try:
            os.rename(tmp, out)  # POSIX: replaces an empty folder atomically
        except OSError:
            if out.is_dir() and not any(out.iterdir()):
                out.rmdir()
                os.rename(tmp, out)
            elif not _is_complete(out, spec):  # else another process won the race
                raise DatasetError(f"{out} changed while the synthetic dataset was drawn") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


# ---------------------------------------------------------------------------------------------
# Registered datasets


def _existing_spec(folder: Path, domain: str) -> SyntheticSpec | None:
    """The spec of the complete synthetic ``domain`` dataset in ``folder``, if there is one."""
    marker = _read_marker(folder)
    if not marker or marker.get("version") != GENERATOR_VERSION:
        return None
    try:
        spec = SyntheticSpec(**marker["spec"])  # type: ignore[arg-type]
    except (TypeError, DatasetError):
        return None
    return spec if spec.domain == domain and _is_complete(folder, spec) else None


def _load(name: str, domain: str, root: str | os.PathLike[str], **kw: object) -> ReidDataset:
    """Load (drawing it first if needed) the ``domain`` dataset in ``root``. With no option
    given, a complete synthetic dataset already in ``root`` is used as it is, whatever its
    size (e.g. the one ``adaptreid demo`` drew with ``data.target_options``); options that
    differ from what is there redraw it."""
    folder = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    if all(v is None for v in kw.values()) and _existing_spec(folder, domain) is not None:
        return load_named_folders(name, folder, BBOX_FOLDERS)
    preset = str(kw.pop("preset", None) or "demo")
    base = generate_synthetic_reid(folder, SyntheticSpec.preset(preset, domain=domain, **kw))
    return load_named_folders(name, base, BBOX_FOLDERS)


_DOMAIN_OPTIONS = (
    "preset",
    "seed",
    "num_train_ids",
    "num_test_ids",
    "images_per_id_per_camera",
    "num_cameras",
    "height",
    "width",
    "camera_shift",
)


def _domain_dataset(name: str, domain: str, doc: str):
    """The registered factory of one synthetic domain: its options are the
    :class:`SyntheticSpec` fields ``generate_synthetic_reid`` takes (all optional)."""

    def factory(
        root: str | os.PathLike[str],
        preset: str | None = None,
        seed: int | None = None,
        num_train_ids: int | None = None,
        num_test_ids: int | None = None,
        images_per_id_per_camera: int | None = None,
        num_cameras: int | None = None,
        height: int | None = None,
        width: int | None = None,
        camera_shift: float | None = None,
    ) -> ReidDataset:
        given = locals()
        return _load(name, domain, root, **{k: given[k] for k in _DOMAIN_OPTIONS})

    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    factory.__doc__ = doc
    return factory


synthetic_source = DATASETS.register("synthetic-source", "syn-source")(
    _domain_dataset(
        "synthetic-source",
        "source",
        """The built-in synthetic *source* domain (bright, neutral cameras), drawn into
        ``root`` on first use (see :func:`generate_synthetic_reid`; ``preset`` ``demo`` unless
        given, or the dataset already in ``root`` when no option is given); labelled.""",
    )
)
synthetic_target = DATASETS.register("synthetic-target", "syn-target")(
    _domain_dataset(
        "synthetic-target",
        "target",
        """The built-in synthetic *target* domain (dark, tinted, blurred, low-resolution
        cameras), drawn into ``root`` on first use. Its train pids are the truth (for
        pseudo-label quality reports); adaptation treats them as unknown.""",
    )
)

__all__ += ["synthetic_source", "synthetic_target"]
