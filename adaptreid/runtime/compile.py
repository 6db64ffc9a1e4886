"""``torch.compile`` chosen per machine: ``train.compile: auto``.

Inductor's CPU backend fuses a network's element-wise work around oneDNN's convolutions. What
that buys depends on the CPU, the network, the input size and the precision, and it costs a
compilation (tens of seconds to minutes on 2 cores) in every process that uses it. So, as
``amp: auto`` does for precision (:mod:`adaptreid.runtime.precision`), ``auto`` measures: a
probe compiles a private copy of the network's backbone, then times eager against compiled
steps in interleaved rounds and keeps the compiled one only where the median ratio of step
times is below a margin (default 0.95): never slower than eager. The answer is cached per
machine, network, input size, batch, mode and precision in the same file as the precision
probe's (``~/.cache/adaptreid/precision.json``).

* ``never`` (the default) and ``always`` pass through; ``always`` compiles without probing.
* Only the backbone of an adaptreid :class:`~adaptreid.models.build.ReidModel` is compiled
  (:meth:`~adaptreid.models.build.ReidModel.set_compiled`): the head stays eager, so the new
  classifier MSPLR and PAST make at every step never forces a recompilation.
* Under torch.distributed rank 0 decides and broadcasts, as for precision.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import time
from typing import Any

import torch

from .precision import (
    Mode,
    Precision,
    ProbeSettings,
    _probe,
    _ProbeTimer,
    _read,
    _write_entry,
    cache_path,
    probe_key,
)

__all__ = ["COMPILE_SETTINGS", "resolve_compile"]

#: ``train.compile``
COMPILE_SETTINGS = ("never", "always", "auto")
_EAGER = {"compile": False}
_COMPILED = {"compile": True}


def _compiled_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The model with its backbone compiled (a ReidModel), or the whole model compiled."""
    if hasattr(model, "set_compiled"):
        model.set_compiled(train=True, extract=True)
        return model
    return torch.compile(model)


class _CompileTimer(_ProbeTimer):
    """Seconds per step of a private copy of the model, eager or compiled, in one precision.
    The first compiled call (tracing and code generation) is timed apart: ``compile_s``."""

    def __init__(self, model, input_size, device, mode: Mode, batch: int, steps: int, prec):
        super().__init__(model, input_size, device, mode, batch, steps)
        self.precision: Precision = prec
        self.compile_s = 0.0

    def __call__(self, variant) -> float:
        key = bool(variant["compile"])
        amp = self.precision.amp
        if key not in self.built:
            m, x, opt = self._build(amp, self.precision.channels_last)
            if key:
                m = _compiled_copy(m)  # the same parameters: the optimiser still holds them
            self.built[key] = (m, x, opt)
            t0 = time.perf_counter()
            self._steps(m, x, opt, amp, 1)  # warm-up; for the compiled copy, the compilation
            if key:
                self.compile_s = time.perf_counter() - t0
        m, x, opt = self.built[key]
        t0 = time.perf_counter()
        self._steps(m, x, opt, amp, self.steps)
        return (time.perf_counter() - t0) / self.steps


def resolve_compile(
    setting: str,
    model: torch.nn.Module,
    input_size,
    device,
    *,
    mode: Mode = "train",
    precision: Precision | None = None,
    probe: ProbeSettings | None = None,
) -> tuple[bool, str]:
    """``(compile, reason)`` for a model on this machine.

    Args:
        setting: ``never`` / ``always`` (returned as they are) or ``auto`` (probed, cached).
        model: the network (only copied for the probe; its weights and mode are untouched).
        input_size: ``(height, width)`` of the input images.
        device: where the model runs.
        mode: ``train`` (forward + backward + optimiser step) or ``extract`` (no-grad forward).
        precision: the precision the model will run in (the probe times that one).
        probe: batch, cache, steps, rounds and margin, as for ``amp: auto``
            (:class:`~adaptreid.runtime.precision.ProbeSettings`; its ``timer`` takes
            ``{"compile": bool}``).

    Returns:
        ``(True, reason)`` where compiling was asked for or measured faster than eager by the
        margin, else ``(False, reason)``; ``reason`` is one line for the log and the run's
        records (the step times, the compile time, or where a cached answer came from).
    """
    if setting not in COMPILE_SETTINGS:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_SETTINGS)}, got {setting!r}")
    if mode not in ("train", "extract"):
        raise ValueError(f"mode must be 'train' or 'extract', got {mode!r}")
    if setting != "auto":
        return setting == "always", f"compile={setting} (as set)"
    precision = precision or Precision()
    probe = probe or ProbeSettings()
    batch = int(probe.batch_size or (32 if mode == "train" else 64))
    device = torch.device(device)

    from . import distributed as D

    if D.is_dist() and D.world_size() > 1:
        res = None
        if D.is_main():
            res = _resolve_auto(model, input_size, device, mode, batch, precision, probe)
        out, reason = D.broadcast_object(res)
        return out, reason + (" (rank 0's choice)" if not D.is_main() else "")
    return _resolve_auto(model, input_size, device, mode, batch, precision, probe)


def _resolve_auto(model, input_size, device, mode, batch, precision, probe) -> tuple[bool, str]:
    key = (
        probe_key(model, input_size, device, mode=mode, batch_size=batch)
        + f"|compile {precision.amp} channels_last={precision.channels_last}"
    )
    path = cache_path(probe.cache_dir)
    if probe.use_cache:
        entry = _read(path).get(key)
        if isinstance(entry, dict) and isinstance(entry.get("compile"), bool):
            return entry["compile"], (
                f"compile auto ({mode}): {_describe(entry)} "
                f"[cached in {path}, {entry.get('date', '?')}]"
            )
    timer = probe.timer
    if timer is None:
        timer = _CompileTimer(
            copy.deepcopy(model), input_size, device, mode, batch, int(probe.steps), precision
        )
    margin = float(probe.margin)
    med = _probe(
        timer,
        max(1, int(probe.repeats)),
        int(probe.max_repeats),
        margin,
        variants=(_EAGER, _COMPILED),
    )
    entry: dict[str, Any] = {
        "compile": bool(med["faster"]),
        "eager_step_s": med["base"],
        "compiled_step_s": med["candidate"],
        "compile_s": round(float(getattr(timer, "compile_s", 0.0)), 1),
        "ratio": round(med["ratio"], 4),
        "rounds": med["rounds"],
        "margin": margin,
        "batch": batch,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if probe.use_cache:
        with contextlib.suppress(OSError):  # a read-only home must not stop a run
            _write_entry(path, key, entry)
    return entry["compile"], f"compile auto ({mode}): {_describe(entry)} [probed]"


def _describe(entry: dict[str, Any]) -> str:
    choice = "compiled" if entry["compile"] else "eager"
    return (
        f"{choice} (step eager {entry['eager_step_s'] * 1e3:.0f} ms, compiled "
        f"{entry['compiled_step_s'] * 1e3:.0f} ms, median ratio {entry['ratio']:.2f} over "
        f"{entry['rounds']} rounds, margin {entry['margin']:.2f}; compiling took "
        f"{entry['compile_s']:.0f} s)"
    )
