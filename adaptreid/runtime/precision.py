"""Precision and memory layout chosen per machine: ``amp: auto``.

bf16 autocast with the channels_last layout is 1.7x faster than fp32 for a MobileNetV2 step at
256x128 on a CPU with AMX, no faster at 128x64 there, and on a CPU without bf16 hardware it
can be ten times slower (BENCHMARKS.md, issue 16). No rule of thumb covers every CPU and GPU,
so ``auto`` measures: a short probe of the given model at the given input size, fp32 against
bf16 + channels_last, interleaved, and keeps bf16 + channels_last only where it is faster by
a margin. The answer is cached per machine (CPU model name, family / model number and bf16
flags, or GPU name; torch version),
model architecture, input size, batch and mode (training step or forward-only extraction)
in a small JSON file, ``~/.cache/adaptreid/precision.json`` by default (``$ADAPTREID_CACHE_DIR``
or ``cache_dir`` to move it), so the probe runs once per machine and model.

* Explicit values pass through unchanged: ``none`` (also ``fp32``), ``bf16``, ``fp16``, with
  the given ``channels_last``.
* ``auto`` never picks fp16 (on the CPU torch has no fp16 autocast for training; on a GPU fp16
  needs a loss scaler and is the user's explicit choice).
* Under torch.distributed, rank 0 decides (probe or cache) and broadcasts, so that every rank
  uses the same precision; every rank must call :func:`resolve_precision` then.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

__all__ = [
    "CACHE_ENV",
    "Precision",
    "ProbeSettings",
    "cache_path",
    "machine_id",
    "model_id",
    "probe_key",
    "resolve_precision",
]

#: Environment variable naming the cache folder (default ``~/.cache/adaptreid``).
CACHE_ENV = "ADAPTREID_CACHE_DIR"
_CACHE_NAME = "precision.json"
_EXPLICIT = {"none": "none", "fp32": "none", "bf16": "bf16", "fp16": "fp16"}
#: ``auto`` keeps bf16 + channels_last only when its median step time is below this fraction
#: of fp32's (a noisy near-tie keeps fp32, the numerically safer choice).
DEFAULT_MARGIN = 0.95

Mode = Literal["train", "extract"]
Variant = Mapping[str, Any]  # {"amp": "none" | "bf16", "channels_last": bool}
Timer = Callable[[Variant], float]

_FP32 = {"amp": "none", "channels_last": False}
_BF16_CL = {"amp": "bf16", "channels_last": True}


@dataclass(frozen=True)
class Precision:
    """How a model runs: autocast precision and memory layout, resolved (never ``auto``; see
    :func:`resolve_precision`). The default is plain fp32 in the default layout."""

    amp: str = "none"
    """``none`` (fp32), ``bf16`` or ``fp16``: the dtype of :func:`~adaptreid.runtime.device.
    autocast` around the forward pass."""
    channels_last: bool = False
    """Feed the input in the channels_last memory layout."""


# --------------------------------------------------------------------------------------------
# keys and the cache file
# --------------------------------------------------------------------------------------------


#: CPU flags that decide whether bf16 pays on a CPU (native bf16 dot products, AMX tiles)
_BF16_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_identity(cpuinfo: str) -> str:
    """The CPU as the probe's answer depends on it, from the text of ``/proc/cpuinfo``: the
    model name, family / model number and the bf16-relevant flags of the first processor.
    The model name alone is not enough: virtual machines report "AMD EPYC" for a Zen 3
    (no AVX-512; bf16 10x slower than fp32) and a Zen 5 (avx512_bf16; bf16 the faster)
    alike, so a cache shared by both would hand one the other's choice."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name", "")
    if not name:
        return ""
    flags = set(fields.get("flags", "").split())
    parts = [f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"]
    parts += [f for f in _BF16_FLAGS if f in flags]
    return f"{name} [{' '.join(parts)}]"


def cpu_model() -> str:
    """This machine's :func:`cpu_identity` (from ``/proc/cpuinfo``), or what ``platform``
    knows where that file is missing (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            ident = cpu_identity(f.read())
        if ident:
            return ident
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def machine_id(device: torch.device | str) -> str:
    """What the probe's answer depends on besides the model: the CPU (:func:`cpu_identity`)
    and core count (or the GPU's name), and the torch version.

    Not the process's intra-op thread count: that follows how many adaptreid processes share
    the machine at the moment (:mod:`adaptreid.runtime.threads`), and keying on it gave one
    machine two answers for one model, one when a second process happened to run beside
    the probe and one when it did not. The machine's core count stands for it."""
    device = torch.device(device)
    if device.type == "cuda":
        hw = torch.cuda.get_device_name(device)
    else:
        hw = f"{cpu_model()} x{os.cpu_count()}"
    return f"{device.type}:{hw}|torch {torch.__version__}"


#: ``arch`` entries left out of the cache key: the classifier's size follows the training set's
#: identity count (751 on Market-1501, 702 on DukeMTMC-reID, a new count at every MSPLR step),
#: not the network's shape, and its share of a step's time is a fraction of a percent; keying
#: on it gave two source models of one network two separate probes and, on a machine where
#: the two variants are close, two different answers (issue 27).
_KEY_IGNORES = ("num_classes",)


def model_id(model: torch.nn.Module) -> str:
    """The architecture, not the weights: ``model.arch`` where the model has one (adaptreid's
    ``ReidModel``) without its classifier size (``_KEY_IGNORES``), else the class name and a
    hash of the parameter and buffer shapes."""
    arch = getattr(model, "arch", None)
    if isinstance(arch, Mapping) and arch:
        shape = {k: v for k, v in arch.items() if k not in _KEY_IGNORES}
        return f"{type(model).__name__}:{json.dumps(shape, sort_keys=True, default=str)}"
    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    digest = hashlib.sha1(repr(shapes).encode()).hexdigest()[:12]
    return f"{type(model).__name__}:{digest}"


def probe_key(
    model: torch.nn.Module, input_size, device, *, mode: Mode = "train", batch_size: int = 32
) -> str:
    h, w = (int(v) for v in input_size)
    return f"{machine_id(device)}|{model_id(model)}|{h}x{w}|batch {batch_size}|{mode}"


def cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` / ``$ADAPTREID_CACHE_DIR`` / ``~/.cache/adaptreid``, + ``precision.json``."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "adaptreid"
    return Path(cache_dir) / _CACHE_NAME


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock on ``path.lock`` (no-op where fcntl is missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_entry(path: Path, key: str, entry: dict) -> None:
    """Add one entry: read-modify-write under the lock, then an atomic rename, so that
    concurrent processes never lose each other's entries or see a half-written file."""
    with _locked(path):
        data = _read(path)
        data[key] = entry
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


# --------------------------------------------------------------------------------------------
# the probe
# --------------------------------------------------------------------------------------------


def _scalar_loss(out) -> torch.Tensor:
    """A float32 scalar depending on every floating tensor of a model's output (a tensor, or
    a dict / list / tuple of them)."""
    if torch.is_tensor(out):
        if out.is_floating_point():
            return out.float().mean()
        return torch.zeros((), device=out.device)
    if isinstance(out, Mapping):
        items = list(out.values())
    elif isinstance(out, list | tuple):
        items = list(out)
    else:
        items = []
    terms = [_scalar_loss(v) for v in items if v is not None]
    return torch.stack(terms).sum() if terms else torch.zeros(())


class _ProbeTimer:
    """Seconds per step of a private copy of the model, per variant (built on first use, with
    a warm-up step): a forward + backward + SGD step in training mode, or a no-grad forward
    in eval mode for extraction. The caller's model is never touched."""

    def __init__(self, model, input_size, device, mode: Mode, batch_size: int, steps: int):
        self.model, self.device, self.mode, self.steps = model, torch.device(device), mode, steps
        h, w = (int(v) for v in input_size)
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch_size, 3, h, w, generator=gen).to(self.device)
        self.built: dict = {}

    def _build(self, amp: str, channels_last: bool):
        m = copy.deepcopy(self.model).to(self.device)
        x = self.x
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        m.train(self.mode == "train")
        opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-6)
        return m, x, opt

    def _steps(self, m, x, opt, amp: str, n: int) -> None:
        from .device import autocast

        for _ in range(n):
            if self.mode == "train":
                with autocast(self.device, amp):
                    out = m(x)
                loss = _scalar_loss(out)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            else:
                with torch.no_grad(), autocast(self.device, amp):
                    m(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, variant: Variant) -> float:
        key = (variant["amp"], bool(variant["channels_last"]))
        if key not in self.built:
            self.built[key] = self._build(*key)
            self._steps(*self.built[key], key[0], 1)  # warm-up (allocations, kernels)
        m, x, opt = self.built[key]
        t0 = time.perf_counter()
        self._steps(m, x, opt, key[0], self.steps)
        return (time.perf_counter() - t0) / self.steps


def _bf16_possible(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu"


def _probe(
    timer: Timer,
    repeats: int,
    max_repeats: int,
    margin: float,
    variants: tuple[Variant, Variant] = (_FP32, _BF16_CL),
) -> dict[str, Any]:
    """Seconds per step of a base variant and a candidate (fp32 and bf16 + channels_last by
    default), timed in interleaved rounds (the two see the same machine load), and the
    choice.

    Each round gives one ratio ``candidate / base``. After ``repeats`` rounds the probe stops
    when every ratio lies on the same side of ``margin`` (a clear answer); otherwise it adds
    rounds, up to ``max_repeats``, and decides by the median ratio. A machine where the two
    are close thus gets a longer probe, not a coin flip from two steps."""
    base, candidate = variants
    times: dict[str, list[float]] = {"base": [], "candidate": []}
    ratios: list[float] = []
    while True:
        times["base"].append(float(timer(dict(base))))
        times["candidate"].append(float(timer(dict(candidate))))
        ratios.append(times["candidate"][-1] / max(times["base"][-1], 1e-12))
        n = len(ratios)
        clear = all(r < margin for r in ratios) or all(r >= margin for r in ratios)
        if (n >= repeats and clear) or n >= max(repeats, max_repeats):
            break
    ratio = statistics.median(ratios)
    return {
        "base": statistics.median(times["base"]),
        "candidate": statistics.median(times["candidate"]),
        "ratio": ratio,
        "rounds": len(ratios),
        "clear": clear,
        "faster": ratio < margin,
    }


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeSettings:
    """How ``amp: auto`` probes and caches its answer (:func:`resolve_precision`)."""

    batch_size: int | None = None
    """Probe batch (None: 32 for training, 64 for extraction)."""
    cache_dir: str | os.PathLike | None = None
    """Folder of ``precision.json`` (None: ``$ADAPTREID_CACHE_DIR`` or ``~/.cache/adaptreid``)."""
    use_cache: bool = True
    """Read and write the cache (False: always probe, write nothing)."""
    steps: int = 2
    """Steps per variant in one round of the probe (after one warm-up step each)."""
    repeats: int = 3
    """Rounds, interleaved between the variants, when every round agrees (see ``max_repeats``)."""
    max_repeats: int = 9
    """Rounds at most: where the rounds' ratios ``bf16 / fp32`` straddle ``margin``, the probe
    goes on to this many and decides by their median."""
    margin: float = DEFAULT_MARGIN
    """bf16 + channels_last is chosen when the median ratio of its step time to fp32's is
    below ``margin``."""
    timer: Timer | None = None
    """``timer(variant) -> seconds per step`` with ``variant = {"amp", "channels_last"}``
    (for tests; None: the real probe)."""


def resolve_precision(
    amp: str,
    model: torch.nn.Module,
    input_size,
    device,
    *,
    channels_last: bool | None = None,
    mode: Mode = "train",
    probe: ProbeSettings | None = None,
) -> tuple[str, bool, str]:
    """``(amp, channels_last, reason)`` for a model on this machine.

    Args:
        amp: ``none`` / ``fp32`` / ``bf16`` / ``fp16`` (returned unchanged, ``fp32`` as
            ``none``, with ``channels_last`` as given) or ``auto``.
        model: the network (only copied for the probe; its weights and mode are untouched).
        input_size: ``(height, width)`` of the input images.
        device: where the model runs.
        channels_last: the layout: None (the default) leaves it to the probe with ``auto``
            and means the default layout with an explicit ``amp``; True / False forces it
            either way (``auto`` then chooses the precision only).
        mode: ``train`` (forward + backward + optimiser step) or ``extract`` (no-grad
            forward); each has its own cache entry.
        probe: the probe's batch, cache folder, cache use, steps, repeats, margin and timer
            (a :class:`ProbeSettings`; None: its defaults). The probe times ``repeats``
            rounds of ``steps`` steps per variant, interleaved, after one warm-up step each,
            and compares the medians.

    Returns:
        ``("bf16", True, reason)`` or ``("none", False, reason)`` for ``auto``; ``reason`` is
        one line for the log (the measured step times, or where the cached answer came from).
    """
    if not isinstance(amp, str):
        raise ValueError(f"amp must be a string (none, bf16, fp16 or auto), got {amp!r}")
    amp_l = amp.lower()
    if amp_l in _EXPLICIT:
        out = _EXPLICIT[amp_l]
        return out, bool(channels_last), f"amp={out}, channels_last={bool(channels_last)} (as set)"
    if amp_l != "auto":
        raise ValueError(f"amp must be none, bf16, fp16 or auto, got {amp!r}")
    if mode not in ("train", "extract"):
        raise ValueError(f"mode must be 'train' or 'extract', got {mode!r}")
    device = torch.device(device)
    probe = probe or ProbeSettings()
    batch = int(probe.batch_size or (32 if mode == "train" else 64))

    from . import distributed as D

    if D.is_dist() and D.world_size() > 1:
        res = None
        if D.is_main():
            res = _resolve_auto(model, input_size, device, mode, batch, probe)
        amp_r, cl_r, reason = D.broadcast_object(res)
        reason += " (rank 0's choice)" if not D.is_main() else ""
    else:
        amp_r, cl_r, reason = _resolve_auto(model, input_size, device, mode, batch, probe)
    if channels_last is not None and bool(channels_last) != cl_r:
        cl_r = bool(channels_last)
        reason += f"; channels_last={cl_r} (as set)"
    return amp_r, cl_r, reason


def _resolve_auto(
    model, input_size, device, mode: Mode, batch: int, probe: ProbeSettings
) -> tuple[str, bool, str]:
    """``amp: auto`` resolved on this process: from the cache, or probed (``batch``: the
    probe batch, ``probe.batch_size`` or the mode's default)."""
    cache_dir, use_cache, timer = probe.cache_dir, probe.use_cache, probe.timer
    steps, repeats, margin = probe.steps, max(1, int(probe.repeats)), float(probe.margin)
    if not _bf16_possible(device):
        return "none", False, f"auto: fp32 ({device.type} without bf16 support)"
    key = probe_key(model, input_size, device, mode=mode, batch_size=batch)
    path = cache_path(cache_dir)
    if use_cache:
        entry = _read(path).get(key)
        if isinstance(entry, dict) and entry.get("amp") in ("none", "bf16"):
            return (
                entry["amp"],
                bool(entry.get("channels_last", False)),
                f"auto ({mode}): {_describe(entry)} [cached in {path}, {entry.get('date', '?')}]",
            )
    if timer is None:
        timer = _ProbeTimer(model, input_size, device, mode, batch, int(steps))
    med = _probe(timer, repeats, int(probe.max_repeats), margin)
    faster = bool(med["faster"])
    entry = {
        "amp": "bf16" if faster else "none",
        "channels_last": faster,
        "fp32_step_s": med["base"],
        "bf16_channels_last_step_s": med["candidate"],
        "ratio": round(med["ratio"], 4),
        "rounds": med["rounds"],
        "margin": margin,
        "batch": batch,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if use_cache:
        with contextlib.suppress(OSError):  # a read-only home must not stop a run
            _write_entry(path, key, entry)
    return entry["amp"], entry["channels_last"], f"auto ({mode}): {_describe(entry)} [probed]"


def _describe(entry: Mapping) -> str:
    choice = "bf16 + channels_last" if entry["amp"] == "bf16" else "fp32"
    f, b = entry.get("fp32_step_s"), entry.get("bf16_channels_last_step_s")
    if f is None or b is None:
        return choice
    batch = entry.get("batch", 0) or 0
    rate = f"; {batch / f:.1f} vs {batch / b:.1f} img/s" if batch and f > 0 and b > 0 else ""
    rounds = ""
    if entry.get("rounds"):
        rounds = (
            f"; median ratio {entry.get('ratio', b / f):.2f} over {entry['rounds']} rounds, "
            f"margin {entry.get('margin', DEFAULT_MARGIN):.2f}"
        )
    return (
        f"{choice} (step fp32 {f * 1e3:.0f} ms, bf16+channels_last {b * 1e3:.0f} ms{rate}{rounds})"
    )
