"""Intra-op threads shared fairly between the adaptreid processes of one machine.

Why: torch starts one intra-op thread per core in every process, and its OpenMP threads spin
(busy-wait) between parallel regions. Two adaptreid processes on a 2-core machine thus run 4
spinning threads on 2 cores, and each keeps stealing the cores the other's threads wait on:
an adaptation run with a second process beside it trained at 5.5 img/s instead of 93.7 (a
17x slowdown where a fair share is 2x; issue 27, BENCHMARKS.md).

So each adaptreid process (every ``adaptreid`` command that computes, through
:func:`claim`)

* registers itself in a small registry of live processes, one file per pid under
  ``/tmp/adaptreid-threads/`` (``$ADAPTREID_THREADS_DIR`` moves it); entries of processes
  that are gone (killed, crashed) are ignored and removed;
* runs ``cores // live processes`` intra-op threads (at least 1), ``cores`` being the CPUs
  this process may run on;
* re-checks that share every few seconds from its long loops (:func:`refresh`: the trainer's
  batches, feature extraction), so that when the other process ends the survivor takes the
  cores back, and a process that starts later is made room for;
* leaves OpenMP's wait policy as it is (threads spin between parallel regions): with the
  fair share two processes no longer fight over the same cores, and a passive wait
  (``OMP_WAIT_POLICY=PASSIVE``) made a process alone 29-30% slower in
  ``benchmarks/shared_machine.py`` (2-core AMD EPYC, MobileNetV2 step: 54.5 against 76.3
  img/s) for side-by-side rates of 46-47 img/s either way (BENCHMARKS.md, "Sharing a
  machine"). Set it yourself where many processes share few cores.

``ADAPTREID_THREADS=N`` (a positive integer) fixes the count instead, and ``adaptreid
evaluate --threads N`` does for that command. The share is only a default: processes other
than adaptreid's are not counted.

Below everything but ``config`` and ``errors``; torch is imported only when a thread count is
applied.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

__all__ = [
    "DIR_ENV",
    "ENV",
    "ThreadShare",
    "available_cores",
    "claim",
    "fair_share",
    "live_processes",
    "refresh",
    "registry_dir",
    "threads_from_env",
]

log = logging.getLogger("adaptreid")

#: Fixes every adaptreid process's intra-op thread count (a positive integer).
ENV = "ADAPTREID_THREADS"
#: The registry folder of live adaptreid processes (default ``<tmp>/adaptreid-threads``).
DIR_ENV = "ADAPTREID_THREADS_DIR"
#: Seconds between two looks at the registry from :func:`refresh` (a look lists a folder of a
#: few files; a loop calls :func:`refresh` every batch and pays a clock read otherwise).
RECHECK_S = 5.0


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------


def threads_from_env(environ: dict[str, str] | None = None) -> int | None:
    """The thread count ``$ADAPTREID_THREADS`` fixes, or None when it is unset or empty;
    anything but a positive integer raises :class:`ConfigError` naming the variable."""
    raw = (os.environ if environ is None else environ).get(ENV, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(
            f"environment variable {ENV}={raw!r}: expected a positive integer (intra-op threads "
            f"of each adaptreid process), or leave it unset for a fair share of the cores"
        )
    return n


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask, so ``taskset`` and cpusets
    count), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def fair_share(cores: int, live: int) -> int:
    """``cores // live`` threads, at least 1 (three processes on two cores still run)."""
    return max(1, int(cores) // max(1, int(live)))


# --------------------------------------------------------------------------------------------
# the registry of live processes
# --------------------------------------------------------------------------------------------


def registry_dir() -> Path:
    """``$ADAPTREID_THREADS_DIR``, else ``<tmp>/adaptreid-threads`` (one per machine, shared
    by every user: the cores are)."""
    return Path(os.environ.get(DIR_ENV) or Path(tempfile.gettempdir()) / "adaptreid-threads")


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, ``/proc/PID/stat`` field
    22), or None where it cannot be read. It tells a live process from a later one that was
    given the pid of a dead one."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, started: str) -> bool:
    """Whether the process a registry entry names still runs (and is the same process)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    except OSError:
        return False
    if started:
        now = _start_time(pid)
        if now is not None and now != started:
            return False  # the pid was reused by another process
    return True


def register(directory: Path | None = None, pid: int | None = None) -> Path | None:
    """Add this process (or ``pid``) to the registry: a file named by the pid holding its
    start time. Returns the file, or None where the folder cannot be written (the process
    then counts only itself)."""
    d = Path(directory) if directory is not None else registry_dir()
    pid = os.getpid() if pid is None else int(pid)
    try:
        d.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # shared by every user, as /tmp is (sticky bit)
            if d.stat().st_uid == os.getuid():
                os.chmod(d, 0o1777)
        path = d / str(pid)
        path.write_text(_start_time(pid) or "", encoding="ascii")
        return path
    except OSError as e:
        log.debug("thread registry %s not writable (%s): counting this process alone", d, e)
        return None


def unregister(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()


def live_processes(directory: Path | None = None, *, include: int | None = None) -> list[int]:
    """The pids of the live adaptreid processes in the registry (stale entries are removed
    where permitted), plus ``include`` (this process) whether registered or not."""
    d = Path(directory) if directory is not None else registry_dir()
    pids: set[int] = set() if include is None else {int(include)}
    try:
        entries = list(d.iterdir())
    except OSError:
        entries = []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid in pids:
            continue
        try:
            started = entry.read_text(encoding="ascii").strip()
        except OSError:
            continue  # removed meanwhile
        if _alive(pid, started):
            pids.add(pid)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
    return sorted(pids)


# --------------------------------------------------------------------------------------------
# the share of this process
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThreadShare:
    """How many intra-op threads this process runs, and why."""

    threads: int
    cores: int
    live: int
    """Live adaptreid processes counted, this one included (0 when the count is fixed)."""
    source: str
    """``fair share``, ``$ADAPTREID_THREADS`` or ``--threads``."""

    def describe(self) -> str:
        if self.source != "fair share":
            return f"{self.threads} intra-op threads ({self.source}; {self.cores} cores)"
        others = self.live - 1
        beside = f"{others} other adaptreid process{'es' if others != 1 else ''}"
        return f"{self.threads} intra-op threads of {self.cores} cores ({beside} on this machine)"


def decide(
    explicit: int | None = None,
    *,
    directory: Path | None = None,
    cores: int | None = None,
    pid: int | None = None,
) -> ThreadShare:
    """The share of process ``pid`` (default: this one): ``explicit`` (``--threads``) when
    given, else ``$ADAPTREID_THREADS``, else the fair share of ``cores`` (default: this
    process's) among the live registered processes."""
    cores = available_cores() if cores is None else max(1, int(cores))
    if explicit:
        if int(explicit) < 1:
            raise ConfigError(f"--threads {explicit}: expected a positive integer")
        return ThreadShare(int(explicit), cores, 0, "--threads")
    env = threads_from_env()
    if env is not None:
        return ThreadShare(env, cores, 0, f"${ENV}")
    me = os.getpid() if pid is None else int(pid)
    live = len(live_processes(directory, include=me))
    return ThreadShare(fair_share(cores, live), cores, live, "fair share")


@dataclass
class _Claim:
    """The claim of this process: where its registry entry is and what it runs."""

    pid: int
    explicit: int | None
    entry: Path | None
    previous: int | None
    share: ThreadShare
    checked: float


_active: _Claim | None = None


def _apply(n: int) -> int | None:
    """Set torch's intra-op threads to ``n``; returns the count it had."""
    import torch

    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    return before


@contextlib.contextmanager
def claim(explicit: int | None = None) -> Iterator[ThreadShare]:
    """Register this process, run its share of intra-op threads inside the block
    (:func:`decide`), and keep it current through :func:`refresh`; on leaving, unregister
    and give torch back the thread count it had. Nested claims share the outer one (a
    command called from another, a test calling ``main``)."""
    global _active
    if _active is not None and _active.pid == os.getpid():
        yield _active.share
        return
    if explicit is not None and int(explicit) < 1:
        raise ConfigError(f"--threads {explicit}: expected a positive integer")
    threads_from_env()  # a bad $ADAPTREID_THREADS raises before anything is registered
    entry = register()
    share = decide(explicit)
    previous = _apply(share.threads)
    # said (INFO) where other processes cut the share; alone or fixed, nothing to tell
    log.log(logging.INFO if share.live > 1 else logging.DEBUG, "threads: %s", share.describe())
    _active = _Claim(os.getpid(), explicit, entry, previous, share, time.monotonic())
    try:
        yield share
    finally:
        _active = None
        unregister(entry)
        if previous is not None:
            with contextlib.suppress(Exception):
                _apply(previous)


def refresh(*, force: bool = False) -> int | None:
    """Re-check this process's share (at most every :data:`RECHECK_S` seconds unless
    ``force``) and apply it; returns the thread count, or None outside a :func:`claim` (a
    library caller's own thread setting is left alone) or when the count is fixed.

    Cheap enough to call every batch: between two looks it reads the clock only."""
    state = _active
    if state is None or state.share.source != "fair share":
        return None
    if state.pid != os.getpid():
        return None  # a forked child (loader worker) of the claiming process
    now = time.monotonic()
    if not force and now - state.checked < RECHECK_S:
        return state.share.threads
    state.checked = now
    share = decide(state.explicit)
    if share.threads != state.share.threads:
        _apply(share.threads)
        log.info("threads: now %s", share.describe())
    state.share = share
    return share.threads
