"""Drawing the built-in synthetic re-ID images (:mod:`.synthetic`): identities (clothing,
body, hair, bags), per-camera styles (viewpoint, background, lighting, blur, resolution,
noise) and the renderer of one image. See :mod:`.synthetic`, "The model"."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from PIL import Image

from ..errors import DatasetError

DOMAINS = ("source", "target")
#: Images are drawn at this multiple of the camera's resolution, then averaged down.
SUPERSAMPLE = 2

# ---------------------------------------------------------------------------------------------
# Identities

_PALETTE = {
    "black": (0.07, 0.07, 0.08),
    "charcoal": (0.22, 0.22, 0.24),
    "grey": (0.5, 0.5, 0.52),
    "white": (0.93, 0.93, 0.9),
    "navy": (0.1, 0.13, 0.36),
    "blue": (0.15, 0.33, 0.75),
    "denim": (0.28, 0.38, 0.55),
    "lightblue": (0.58, 0.72, 0.9),
    "red": (0.78, 0.12, 0.12),
    "maroon": (0.45, 0.09, 0.14),
    "green": (0.14, 0.5, 0.22),
    "olive": (0.42, 0.43, 0.2),
    "teal": (0.08, 0.5, 0.5),
    "yellow": (0.92, 0.8, 0.18),
    "orange": (0.93, 0.5, 0.13),
    "pink": (0.93, 0.6, 0.7),
    "purple": (0.45, 0.2, 0.56),
    "brown": (0.4, 0.25, 0.14),
    "beige": (0.82, 0.74, 0.57),
}
_TOPS = {c: 1.0 for c in _PALETTE} | {"black": 2.5, "white": 2.5, "grey": 1.5, "navy": 1.5}
_LOWERS = {
    "black": 4.0,
    "charcoal": 2.0,
    "navy": 2.0,
    "denim": 3.0,
    "blue": 1.0,
    "grey": 1.5,
    "beige": 1.2,
    "brown": 1.0,
    "olive": 0.8,
    "white": 0.6,
    "red": 0.3,
    "pink": 0.3,
}
_SHOES = {"black": 4.0, "white": 3.0, "brown": 1.5, "grey": 1.0, "red": 0.5, "blue": 0.5}
_HAIR = {
    "black": (0.05, 0.04, 0.04),
    "darkbrown": (0.2, 0.12, 0.07),
    "brown": (0.38, 0.24, 0.12),
    "blonde": (0.8, 0.68, 0.38),
    "grey": (0.62, 0.62, 0.62),
    "red": (0.55, 0.2, 0.08),
}
_HAIR_W = {"black": 4.0, "darkbrown": 3.0, "brown": 2.0, "blonde": 1.2, "grey": 0.6, "red": 0.3}
_SKIN = ((0.96, 0.8, 0.69), (0.87, 0.68, 0.55), (0.74, 0.55, 0.4), (0.55, 0.38, 0.26),
         (0.36, 0.24, 0.16))  # fmt: skip
PATTERNS = ("plain", "hstripes", "vstripes", "checks", "print")
LOWER_KINDS = ("trousers", "shorts", "skirt")
BAGS = ("none", "shoulder", "backpack")


@dataclass(frozen=True)
class Identity:
    """One person's look. Colours are RGB in [0, 1]; sizes are fractions of the body height."""

    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    long_hair: bool
    shirt: tuple[float, float, float]
    long_sleeves: bool
    pattern: str
    pattern_color: tuple[float, float, float]
    pattern_freq: float
    lower: str
    lower_color: tuple[float, float, float]
    shoes: tuple[float, float, float]
    bag: str
    bag_color: tuple[float, float, float]
    bag_side: int
    height: float
    width: float
    head: float
    torso: float


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _shade(rng: np.random.Generator, rgb: tuple[float, ...], amount: float = 0.05) -> tuple:
    out = np.clip(np.asarray(rgb) + rng.uniform(-amount, amount, 3), 0.0, 1.0)
    return tuple(float(round(v, 4)) for v in out)


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one identity from ``rng``."""
    shirt_name = _pick(rng, _TOPS)
    pattern = PATTERNS[int(rng.choice(5, p=[0.4, 0.18, 0.12, 0.12, 0.18]))]
    other = _pick(rng, {c: 1.0 for c in _PALETTE if c != shirt_name})
    lower = LOWER_KINDS[int(rng.choice(3, p=[0.62, 0.2, 0.18]))]
    bag = BAGS[int(rng.choice(3, p=[0.45, 0.3, 0.25]))]
    return Identity(
        skin=_shade(rng, _SKIN[int(rng.integers(len(_SKIN)))], 0.03),
        hair=_shade(rng, _HAIR[_pick(rng, _HAIR_W)], 0.03),
        long_hair=bool(rng.random() < 0.35),
        shirt=_shade(rng, _PALETTE[shirt_name]),
        long_sleeves=bool(rng.random() < 0.5),
        pattern=pattern,
        pattern_color=_shade(rng, _PALETTE[other]),
        pattern_freq=float(round(rng.uniform(3.0, 5.5), 3)),
        lower=lower,
        lower_color=_shade(rng, _PALETTE[_pick(rng, _LOWERS)]),
        shoes=_shade(rng, _PALETTE[_pick(rng, _SHOES)], 0.03),
        bag=bag,
        bag_color=_shade(rng, _PALETTE[_pick(rng, {c: 1.0 for c in _PALETTE})]),
        bag_side=int(rng.choice((-1, 1))),
        height=float(round(rng.uniform(0.84, 0.95), 4)),
        width=float(round(rng.uniform(0.85, 1.2), 4)),
        head=float(round(rng.uniform(0.062, 0.076), 4)),
        torso=float(round(rng.uniform(0.27, 0.35), 4)),
    )


# ---------------------------------------------------------------------------------------------
# Cameras


@dataclass(frozen=True)
class CameraStyle:
    """How one camera sees the scene (see the module docstring). The defaults are a bright,
    neutral, sharp, full-resolution camera with a plain light background."""

    name: str
    # viewpoint
    view: str = "front"  # "front" or "back"
    mirror: bool = False
    shear: float = 0.0
    scale: float = 1.0
    dy: float = 0.0
    # background scene
    wall: tuple[float, float, float] = (0.82, 0.82, 0.8)
    floor: tuple[float, float, float] = (0.7, 0.68, 0.64)
    horizon: float = 0.78
    texture: str = "plain"  # "plain", "bricks", "stripes", "tiles", "windows"
    texture_color: tuple[float, float, float] = (0.7, 0.7, 0.7)
    blotches: float = 0.05
    # photometry and optics
    gain: float = 1.0
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    haze: float = 0.0
    blur: int = 0  # box-blur radius in output pixels (0 = none)
    downsample: float = 1.0  # drawn at (height, width) / downsample, then upsampled
    noise: float = 0.015


_C = CameraStyle
CAMERAS: dict[str, tuple[CameraStyle, ...]] = {
    # Daylight: bright backgrounds, sharp, full resolution; lighting and white balance vary a
    # little between cameras (as in Market-1501), so a source model learns some invariance.
    "source": (
        _C("plaza (front)", shear=0.02),
        _C("corridor (back)", view="back", mirror=True, shear=-0.03, scale=0.95, dy=0.02,
           wall=(0.62, 0.64, 0.68), floor=(0.5, 0.51, 0.54), horizon=0.74, texture="tiles",
           texture_color=(0.45, 0.47, 0.5), gain=0.88, cast=(0.93, 1.0, 1.1)),
        _C("shopfront (front)", mirror=True, scale=0.97, dy=-0.01, wall=(0.86, 0.82, 0.74),
           floor=(0.74, 0.7, 0.62), horizon=0.8, texture="windows",
           texture_color=(0.6, 0.7, 0.8), gain=1.08, cast=(1.1, 1.0, 0.88)),
        _C("park path (back)", view="back", shear=0.04, scale=1.02, dy=0.01,
           wall=(0.66, 0.78, 0.64), floor=(0.72, 0.7, 0.62), horizon=0.76, texture="stripes",
           texture_color=(0.55, 0.68, 0.52), blotches=0.1, gain=0.95, cast=(0.97, 1.05, 0.94),
           blur=1, noise=0.02),
        _C("atrium (front)", shear=-0.02, scale=0.92, wall=(0.88, 0.88, 0.86),
           floor=(0.76, 0.74, 0.7), horizon=0.8, gain=1.12, cast=(1.02, 1.0, 0.97)),
        _C("lobby (back)", view="back", mirror=True, shear=0.03, scale=0.98, dy=-0.02,
           wall=(0.8, 0.76, 0.72), floor=(0.62, 0.56, 0.52), horizon=0.77, texture="bricks",
           texture_color=(0.7, 0.66, 0.62), gain=0.92, cast=(1.06, 0.98, 0.94)),
    ),
    # Evening: dimmer, textured backgrounds; each camera its own clear colour cast; blurred
    # and low resolution. Tuned (see the module docstring) so that a source model transfers
    # poorly but not hopelessly; ``camera_shift`` scales the gap.
    "target": (
        _C("sodium street (front)", mirror=True, shear=0.03, scale=0.92, dy=0.03,
           wall=(0.53, 0.51, 0.48), floor=(0.42, 0.41, 0.38), horizon=0.74, texture="bricks",
           texture_color=(0.36, 0.3, 0.28), blotches=0.16, gain=0.86, cast=(1.14, 0.97, 0.78),
           gamma=1.08, haze=0.01, blur=1, downsample=1.5, noise=0.03),
        _C("metro (back)", view="back", scale=0.89, dy=0.03, wall=(0.47, 0.5, 0.53),
           floor=(0.37, 0.37, 0.37), horizon=0.71, texture="stripes",
           texture_color=(0.58, 0.62, 0.68), blotches=0.13, gain=0.83, cast=(0.86, 0.97, 1.17),
           gamma=1.06, haze=0.02, blur=1, downsample=2.0, noise=0.035),
        _C("car park (front)", scale=0.95, dy=0.02, wall=(0.51, 0.53, 0.48),
           floor=(0.44, 0.43, 0.4), horizon=0.75, texture="tiles",
           texture_color=(0.3, 0.31, 0.29), blotches=0.19, gain=0.92, cast=(0.92, 1.1, 0.89),
           haze=0.03, blur=1, downsample=1.5, noise=0.03),
        _C("night market (back)", view="back", mirror=True, shear=0.04, scale=0.9, dy=0.02,
           wall=(0.51, 0.43, 0.47), floor=(0.4, 0.36, 0.35), horizon=0.73, texture="windows",
           texture_color=(0.7, 0.52, 0.3), blotches=0.19, gain=0.81, cast=(1.08, 0.88, 1.06),
           gamma=1.11, haze=0.01, blur=1, downsample=2.0, noise=0.04),
        _C("tunnel (front)", mirror=True, scale=0.88, dy=0.04, wall=(0.48, 0.48, 0.47),
           floor=(0.38, 0.37, 0.35), horizon=0.71, texture="bricks",
           texture_color=(0.3, 0.3, 0.3), blotches=0.16, gain=0.83, cast=(1.0, 0.92, 0.83),
           gamma=1.11, haze=0.03, blur=1, downsample=2.0, noise=0.04),
        _C("underpass (back)", view="back", shear=0.02, scale=0.93, dy=0.02,
           wall=(0.45, 0.48, 0.46), floor=(0.37, 0.37, 0.34), horizon=0.74, texture="stripes",
           texture_color=(0.26, 0.42, 0.38), blotches=0.19, gain=0.85, cast=(0.86, 1.03, 1.11),
           gamma=1.06, haze=0.02, blur=1, downsample=1.5, noise=0.035),
    ),
}  # fmt: skip


def _lerp(neutral: object, style: object, t: float) -> object:
    if isinstance(style, (bool, str)):
        return style
    if isinstance(style, tuple):
        return tuple(_lerp(n, v, t) for n, v in zip(neutral, style))  # type: ignore[arg-type]
    value = neutral + t * (style - neutral)  # type: ignore[operator]
    return max(0, round(value)) if isinstance(style, int) else max(0.0, float(value))


def camera_styles(domain: str, shift: float = 1.0) -> tuple[CameraStyle, ...]:
    """The (up to 6) camera styles of ``domain``; camera ``k`` uses style ``k``.

    ``shift`` moves every numeric setting from a neutral daylight camera (``CameraStyle``'s
    defaults; ``shift=0``: all cameras alike but for their background texture and view) to
    the built-in style (``1``, the default) and beyond (up to 1.5, a harder gap).
    """
    if domain not in CAMERAS:
        raise DatasetError(f"synthetic: domain must be one of {', '.join(DOMAINS)}, got {domain!r}")
    if shift == 1.0:
        return CAMERAS[domain]
    neutral = CameraStyle("neutral")
    out = []
    for cam in CAMERAS[domain]:
        values = {
            f.name: _lerp(getattr(neutral, f.name), getattr(cam, f.name), shift)
            for f in fields(CameraStyle)
        }
        values["downsample"] = max(1.0, values["downsample"])  # type: ignore[type-var]
        out.append(CameraStyle(**values))  # type: ignore[arg-type]
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Drawing


def _upsample_noise(rng: np.random.Generator, rows: int, cols: int, h: int, w: int) -> np.ndarray:
    """Smooth noise in [-0.5, 0.5]: a random ``rows x cols`` grid, bilinearly upsampled."""
    grid = rng.random((rows, cols)).astype(np.float32) - 0.5
    img = Image.fromarray(grid, mode="F").resize((w, h), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def draw_background(cam: CameraStyle, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A camera's fixed scene, ``(h, w, 3)`` float32 in [0, 1] (a panorama; images crop it)."""
    v = ((np.arange(h, dtype=np.float32) + 0.5) / h)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    wall = np.asarray(cam.wall, np.float32)
    floor = np.asarray(cam.floor, np.float32)
    is_floor = (v >= cam.horizon)[..., None]
    depth = np.clip((v - cam.horizon) / max(1e-3, 1.0 - cam.horizon), 0, 1)[..., None]
    img = np.where(is_floor, floor * (0.85 + 0.3 * depth), wall * (1.05 - 0.15 * v[..., None]))
    img = np.broadcast_to(img, (h, w, 3)).copy()
    tex = np.asarray(cam.texture_color, np.float32)
    wall_mask = ~is_floor[..., 0]
    cell = h / 16.0
    if cam.texture == "bricks":
        row = np.floor(v * h / cell)
        shift = (row % 2) * cell
        mortar = ((v * h) % cell < cell * 0.18) | (((x + shift) % (2 * cell)) < cell * 0.2)
        img[mortar & wall_mask] = tex
    elif cam.texture == "stripes":
        period = int(rng.integers(6, 12)) * h / 64.0
        stripe = (x % (2 * period)) < period
        img[np.broadcast_to(stripe, (h, w)) & wall_mask] = tex
    elif cam.texture == "tiles":
        lines = ((x % (cell * 2)) < cell * 0.15) | (((v * h) % (cell * 2)) < cell * 0.15)
        img[np.broadcast_to(lines, (h, w)) & ~wall_mask] = tex
    elif cam.texture == "windows":
        top, bottom = cam.horizon * 0.25, cam.horizon * 0.8
        x0 = 0.0
        while x0 < w:
            width = float(rng.uniform(0.5, 1.2)) * h * 0.3
            win = (x >= x0) & (x < x0 + width) & (v > top) & (v < bottom)
            shade = tex * float(rng.uniform(0.7, 1.2))
            img[np.broadcast_to(win, (h, w))] = np.clip(shade, 0, 1)
            x0 += width + float(rng.uniform(0.3, 0.8)) * h * 0.3
    # poles (vertical posts) and low-frequency blotches (dirt, light pools)
    for _ in range(int(rng.integers(1, 4))):
        px, pw = float(rng.uniform(0, w)), float(rng.uniform(0.02, 0.05)) * h
        pole = (x >= px) & (x < px + pw) & (v < cam.horizon + 0.1)
        colour = _PALETTE[str(rng.choice(["grey", "charcoal", "black", "white", "brown"]))]
        img[np.broadcast_to(pole, (h, w))] = np.asarray(colour, np.float32) * wall.mean() / 0.5
    blot = _upsample_noise(rng, 5, max(2, int(w / h * 5)), h, w)
    img *= (1.0 + cam.blotches * 2.0 * blot)[..., None]
    return np.clip(img, 0.0, 1.0)


def _box_blur(img: np.ndarray, radius: int) -> np.ndarray:
    """Separable box blur of an ``(h, w, c)`` array (edges replicated)."""
    if radius <= 0:
        return img
    k = 2 * radius + 1
    for axis in (0, 1):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (radius + 1, radius)
        c = np.cumsum(np.pad(img, pad, mode="edge"), axis=axis, dtype=np.float32)
        n = img.shape[axis]
        hi = np.take(c, np.arange(k, k + n), axis=axis)
        lo = np.take(c, np.arange(0, n), axis=axis)
        img = (hi - lo) / k
    return img


def _resize(img: np.ndarray, h: int, w: int, resample: int) -> np.ndarray:
    if img.shape[:2] == (h, w):
        return img
    chans = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(img[..., c]), mode="F").resize((w, h), resample)
        )
        for c in range(img.shape[2])
    ]
    return np.stack(chans, axis=-1)


def render_image(
    ident: Identity,
    cam: CameraStyle,
    background: np.ndarray,
    rng: np.random.Generator,
    height: int,
    width: int,
) -> np.ndarray:
    """One ``(height, width, 3)`` uint8 image of ``ident`` seen by ``cam``.

    ``background`` is the camera's scene (from :func:`draw_background`), drawn at the camera's
    working resolution times the supersampling factor and at least as wide as the image.
    """
    lo_h = max(8, int(round(height / cam.downsample)))
    lo_w = max(4, int(round(width / cam.downsample)))
    hs, ws = lo_h * SUPERSAMPLE, lo_w * SUPERSAMPLE
    # background crop
    x_off = int(rng.integers(0, background.shape[1] - ws + 1))
    img = background[:hs, x_off : x_off + ws].copy()
    img *= np.float32(rng.uniform(0.94, 1.06))

    # person coordinates: py in [0, 1] from the top of the head to the soles, px in body heights
    v = ((np.arange(hs, dtype=np.float32) + 0.5) / hs)[:, None]
    u = ((np.arange(ws, dtype=np.float32) + 0.5) / ws)[None, :]
    aspect = ws / hs
    body_h = ident.height * cam.scale * float(rng.uniform(0.96, 1.04))
    top = (1.0 - body_h) / 2 + cam.dy + float(rng.uniform(-0.025, 0.025))
    cx = float(rng.uniform(-0.035, 0.035))
    sway = cam.shear + float(rng.uniform(-0.03, 0.03))
    py = (v - top) / body_h
    px = ((u - 0.5) * aspect - cx - sway * (v - 0.5)) / body_h / ident.width
    if cam.mirror:
        px = -px
    py, px = np.broadcast_arrays(py, px)
    front = cam.view == "front"

    def jitter(rgb: tuple[float, float, float]) -> np.ndarray:
        return np.clip(np.asarray(rgb, np.float32) * np.float32(rng.uniform(0.95, 1.05)), 0, 1)

    def paint(mask: np.ndarray, colour: np.ndarray, rel: np.ndarray | None = None) -> None:
        """Colour ``mask``; ``rel`` (-1..1 across the part) adds cylinder shading."""
        if rel is None:
            img[mask] = colour
        else:
            shade = 0.72 + 0.28 * np.sqrt(np.clip(1.0 - rel[mask] ** 2, 0.0, 1.0))
            img[mask] = colour * shade[:, None]

    skin, shirt, lower_c = jitter(ident.skin), jitter(ident.shirt), jitter(ident.lower_color)
    hr = ident.head
    head_cy = hr * 1.02
    shoulder = 2.0 * hr + 0.012
    hip = shoulder + ident.torso
    sole = 1.0
    shoe_top = sole - 0.035
    sw = 0.115  # shoulder half-width
    hw = 0.095  # hip half-width
    stride = float(rng.uniform(-0.05, 0.05))
    swing = float(rng.uniform(-0.15, 0.15))

    # legs (trousers / shorts / skirt) and shoes
    leg_len = shoe_top - hip
    t = np.clip((py - hip) / leg_len, 0.0, 1.0)
    leg_w = hw * 0.5
    for side in (-1.0, 1.0):
        centre = side * hw * 0.5 + side * stride * t
        rel = (px - centre) / leg_w
        leg = (py >= hip) & (py < shoe_top) & (np.abs(rel) < 1.0)
        if ident.lower == "trousers":
            paint(leg, lower_c, rel)
        else:
            knee = hip + (0.38 if ident.lower == "shorts" else 0.3) * leg_len
            paint(leg & (py < knee), lower_c, rel)
            paint(leg & (py >= knee), skin, rel)
        shoe = (py >= shoe_top) & (py < sole) & (np.abs(px - centre - 0.01) < leg_w * 1.15)
        paint(shoe, jitter(ident.shoes))
    if ident.lower == "skirt":
        tt = np.clip((py - hip) / (0.45 * leg_len), 0.0, 1.0)
        half = hw * (1.0 + 0.45 * tt)
        skirt = (py >= hip - 0.01) & (py < hip + 0.45 * leg_len) & (np.abs(px) < half)
        paint(skirt, lower_c, px / half)

    # torso with its pattern
    tt = np.clip((py - shoulder) / ident.torso, 0.0, 1.0)
    half = sw - (sw - hw) * tt
    rel_t = px / half
    torso = (py >= shoulder) & (py < hip + 0.01) & (np.abs(rel_t) < 1.0)
    paint(torso, shirt, rel_t)
    pat_c = jitter(ident.pattern_color)
    f = ident.pattern_freq
    if ident.pattern == "hstripes":
        paint(torso & (np.floor(tt * f * 2) % 2 == 1), pat_c, rel_t)
    elif ident.pattern == "vstripes":
        paint(torso & (np.floor((rel_t + 1) * f * 0.6) % 2 == 1), pat_c, rel_t)
    elif ident.pattern == "checks":
        checks = (np.floor(tt * f * 1.5) + np.floor((rel_t + 1) * f * 0.5)) % 2 == 1
        paint(torso & checks, pat_c, rel_t)
    elif ident.pattern == "print" and front:
        paint(torso & (np.abs(rel_t) < 0.55) & (tt > 0.18) & (tt < 0.6), pat_c, rel_t)

    # bag: backpack (straps in front, bag from behind), shoulder bag (strap + bag at the hip)
    bag_c = jitter(ident.bag_color)
    if ident.bag == "backpack":
        if front:
            for side in (-1.0, 1.0):
                paint(torso & (np.abs(px - side * sw * 0.55) < 0.014) & (tt < 0.7), bag_c * 0.9)
        else:
            rel_b = px / (sw * 0.85)
            pack = (py >= shoulder + 0.02) & (py < hip - 0.04) & (np.abs(rel_b) < 1.0)
            paint(pack, bag_c, rel_b)
    elif ident.bag == "shoulder":
        s = float(ident.bag_side)
        strap_y = shoulder + (ident.torso * 0.85) * (0.5 - 0.5 * s * px / sw)
        paint(torso & (np.abs(py - strap_y) < 0.012), bag_c * 0.8)

    # arms (sleeves long or short), hands
    arm_w = 0.032
    arm_len = ident.torso + 0.06
    for side in (-1.0, 1.0):
        ta = np.clip((py - shoulder) / arm_len, 0.0, 1.0)
        centre = side * (sw + arm_w * 0.7) + side * swing * ta * 0.1
        rel = (px - centre) / arm_w
        arm = (py >= shoulder + 0.005) & (py < shoulder + arm_len) & (np.abs(rel) < 1.0)
        sleeve = arm & ((ta < 0.35) | ident.long_sleeves)
        paint(arm & ~sleeve, skin, rel)
        paint(sleeve, shirt, rel)
        hand = (py >= shoulder + arm_len) & (py < shoulder + arm_len + 0.03) & (np.abs(rel) < 0.9)
        paint(hand, skin * 0.95)
    if ident.bag == "shoulder":
        s = float(ident.bag_side)
        bx = s * (sw + 0.05)
        rel_b = (px - bx) / 0.055
        bag = (py >= hip - 0.05) & (py < hip + 0.07) & (np.abs(rel_b) < 1.0)
        paint(bag, bag_c, rel_b)

    # neck, head, hair
    neck = (py >= head_cy + hr * 0.7) & (py < shoulder + 0.005) & (np.abs(px) < hr * 0.35)
    paint(neck, skin * 0.9)
    rel_h = px / (hr * 0.8)
    head = ((py - head_cy) / hr) ** 2 + rel_h**2 < 1.0
    paint(head, skin, rel_h)
    hair_c = jitter(ident.hair)
    hair_line = head_cy - 0.3 * hr if front else head_cy + 0.55 * hr
    paint(head & (py < hair_line), hair_c, rel_h)
    if ident.long_hair:
        rel_l = px / (hr * 0.9)
        if front:
            long_ = (np.abs(rel_l) > 0.62) & (np.abs(rel_l) < 1.0)
        else:
            long_ = np.abs(rel_l) < 1.0
        long_ &= (py >= head_cy) & (py < shoulder + 0.09)
        paint(long_, hair_c, rel_l)

    # supersampled -> camera resolution; photometry; blur; sensor noise; -> output size
    img = img.reshape(lo_h, SUPERSAMPLE, lo_w, SUPERSAMPLE, 3).mean(axis=(1, 3))
    gain = cam.gain * float(rng.uniform(0.92, 1.08))
    cast = np.asarray(cam.cast, np.float32) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    img = np.clip(img * (gain * cast), 0.0, 1.0) ** np.float32(cam.gamma) + np.float32(cam.haze)
    img = _box_blur(
        img.astype(np.float32), cam.blur if cam.downsample <= 1 else max(0, cam.blur - 1)
    )
    img = img + rng.normal(0.0, cam.noise, img.shape).astype(np.float32)
    img = _resize(np.clip(img, 0.0, 1.0).astype(np.float32), height, width, Image.BILINEAR)
    if cam.downsample > 1 and cam.blur > 0:
        img = _box_blur(img, 1)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
