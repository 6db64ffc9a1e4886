"""Sharing a machine (issue 27): each adaptreid process runs its fair share of the cores
among the live adaptreid processes, ``ADAPTREID_THREADS`` fixes the count, OpenMP threads
wait passively, and every command that extracts features defaults to a run's extraction
settings (``--amp auto``, 2 loader workers)."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import subprocess_env

from adaptreid.api import load
from adaptreid.cli import build_parser, main
from adaptreid.errors import ConfigError
from adaptreid.retrieval.embed import EmbedSettings
from adaptreid.runtime import threads
from adaptreid.runtime.precision import ProbeSettings, probe_key, resolve_precision


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """An empty registry folder of its own, the fair share in force (no
    ``$ADAPTREID_THREADS``) and torch's thread count restored afterwards."""
    d = tmp_path / "registry"
    monkeypatch.setenv(threads.DIR_ENV, str(d))
    monkeypatch.delenv(threads.ENV, raising=False)
    n = torch.get_num_threads()
    yield d
    torch.set_num_threads(n)


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _fake_entry(d, pid: int, started: str | None = None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / str(pid)).write_text(threads._start_time(pid) if started is None else started)


# --------------------------------------------------------------------------------------------
# the share


@pytest.mark.parametrize(
    ("cores", "live", "want"),
    [(2, 1, 2), (2, 2, 1), (2, 3, 1), (8, 3, 2), (16, 4, 4), (1, 1, 1), (4, 0, 4)],
)
def test_fair_share_is_cores_over_live_processes_at_least_one(cores, live, want):
    assert threads.fair_share(cores, live) == want


def test_share_counts_the_live_processes_of_the_registry(registry):
    me, parent = os.getpid(), os.getppid()
    assert threads.decide(cores=2).live == 1  # an empty registry: this process alone
    assert threads.decide(cores=2).threads == 2
    _fake_entry(registry, me)
    assert threads.decide(cores=2).threads == 2  # its own entry counts once
    _fake_entry(registry, parent)  # a live process beside it
    share = threads.decide(cores=2)
    assert (share.live, share.threads, share.source) == (2, 1, "fair share")
    assert threads.decide(cores=6).threads == 3
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _fake_entry(registry, sleeper.pid)  # three live processes
        assert threads.decide(cores=6).threads == 2
        assert threads.decide(cores=2).threads == 1  # 2 // 3 is 0: never below 1
        assert threads.live_processes(registry, include=me) == sorted([me, parent, sleeper.pid])
    finally:
        sleeper.kill()
        sleeper.wait()
    # the sleeper is gone: its entry is stale, ignored and removed
    assert threads.decide(cores=6).threads == 3
    assert not (registry / str(sleeper.pid)).exists()


def test_stale_entries_are_ignored_and_removed(registry):
    dead = _dead_pid()
    _fake_entry(registry, dead, started="")
    _fake_entry(registry, os.getppid(), started="1")  # a live pid, but not the registered one
    (registry / "notes.txt").write_text("not a pid")
    assert threads.live_processes(registry, include=os.getpid()) == [os.getpid()]
    assert threads.decide(cores=4).threads == 4
    assert sorted(p.name for p in registry.iterdir()) == ["notes.txt"]


def test_register_and_unregister(registry):
    entry = threads.register()
    assert entry == registry / str(os.getpid()) and entry.is_file()
    assert threads.live_processes(include=None) == [os.getpid()]
    threads.unregister(entry)
    assert threads.live_processes(include=None) == []


def test_claim_sets_the_share_follows_the_registry_and_restores(registry, monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    torch.set_num_threads(1)
    assert threads.refresh(force=True) is None  # outside a claim: the caller's setting stays
    assert torch.get_num_threads() == 1
    with threads.claim() as share:
        assert (share.threads, share.live) == (4, 1)
        assert torch.get_num_threads() == 4
        assert (registry / str(os.getpid())).is_file()
        _fake_entry(registry, os.getppid())  # a second process starts
        assert threads.refresh() == 4  # checked less than RECHECK_S ago: unchanged
        assert threads.refresh(force=True) == 2 and torch.get_num_threads() == 2
        (registry / str(os.getppid())).unlink()  # it ends: the cores come back
        assert threads.refresh(force=True) == 4 and torch.get_num_threads() == 4
        with threads.claim() as inner:  # nested (a command calling another): the same claim
            assert inner.threads == 4
        assert (registry / str(os.getpid())).is_file()  # the outer claim's entry stays
        assert threads.refresh(force=True) == 4
    assert torch.get_num_threads() == 1
    assert not (registry / str(os.getpid())).exists()


# --------------------------------------------------------------------------------------------
# the override


def test_env_override_fixes_the_count(registry, monkeypatch):
    monkeypatch.setenv(threads.ENV, "3")
    _fake_entry(registry, os.getppid())
    share = threads.decide(cores=2)
    assert (share.threads, share.source) == (3, "$ADAPTREID_THREADS")
    assert threads.decide(5, cores=2).threads == 5  # evaluate --threads wins
    with threads.claim():
        assert torch.get_num_threads() == 3
        assert threads.refresh(force=True) is None  # fixed: never re-checked
        assert torch.get_num_threads() == 3


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_env_override_must_be_a_positive_integer(registry, monkeypatch, value, capsys):
    monkeypatch.setenv(threads.ENV, value)
    with pytest.raises(ConfigError, match=f"{threads.ENV}={value!r}: expected a positive integer"):
        threads.threads_from_env()
    with pytest.raises(ConfigError, match=threads.ENV):
        threads.decide()
    assert main(["export", "--checkpoint", "missing.pt", "--format", "onnx"]) == 2
    assert f"environment variable {threads.ENV}={value!r}" in capsys.readouterr().err
    assert not registry.exists() or not any(registry.iterdir())  # nothing registered


def test_empty_env_means_unset(registry, monkeypatch):
    monkeypatch.setenv(threads.ENV, " ")
    assert threads.threads_from_env() is None
    assert threads.decide(cores=2).source == "fair share"


# --------------------------------------------------------------------------------------------
# OpenMP's wait policy: left to the user


def test_cli_leaves_the_wait_policy_to_the_user():
    """A passive wait cost a process alone 29-30% (BENCHMARKS.md, "Sharing a machine"), so the
    CLI sets no OMP_WAIT_POLICY; and it imports no torch at its top (fast --help)."""
    env = subprocess_env()
    env.pop("OMP_WAIT_POLICY", None)
    code = (
        "import os, sys; import adaptreid.cli; "
        "assert 'torch' not in sys.modules, 'torch imported by the CLI module'; "
        "print(os.environ.get('OMP_WAIT_POLICY'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"


def test_entry_point_imports_the_cli_first():
    """``python -m adaptreid`` runs ``adaptreid/__main__.py``: its only package import is the
    CLI, which imports no torch at its top."""
    src = Path(threads.__file__).parents[1] / "__main__.py"  # read, not run
    imports = [ln for ln in src.read_text().splitlines() if ln.startswith(("import", "from"))]
    assert [ln for ln in imports if ln.startswith("from .")] == ["from .cli import main"]


# --------------------------------------------------------------------------------------------
# extraction defaults of the commands and the API


def _parse(*argv):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize(
    "argv",
    [
        ("evaluate", "--dataset", "market1501", "--root", "r", "--checkpoint", "c.pt"),
        ("cluster", "--checkpoint", "c.pt", "--dataset", "market1501", "--root", "r"),
        ("embed", "--checkpoint", "c.pt", "--images", "d", "--out", "f.npz"),
        ("search", "--checkpoint", "c.pt", "--query", "q.jpg", "--gallery", "g"),
    ],
)
def test_extracting_commands_default_to_a_runs_settings(argv):
    args = _parse(*argv)
    assert args.amp == "auto" and args.num_workers == 2 and args.channels_last is None
    assert _parse(*argv, "--channels-last").channels_last is True
    assert _parse(*argv, "--no-channels-last").channels_last is False
    assert _parse(*argv, "--amp", "none", "--num-workers", "0").amp == "none"


def test_api_defaults_match_the_commands():
    params = inspect.signature(load).parameters
    assert params["amp"].default == "auto" and params["num_workers"].default == 2
    assert params["channels_last"].default is None
    st = EmbedSettings()
    assert (st.amp, st.num_workers, st.channels_last) == ("auto", 2, None)


def test_channels_last_follows_the_probe_unless_forced(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x).mean((2, 3))

    def faster_bf16(variant):
        return 0.5 if variant["amp"] == "bf16" else 1.0

    probe = ProbeSettings(cache_dir=tmp_path, timer=faster_bf16)
    kw = dict(mode="extract", probe=probe)
    assert resolve_precision("auto", Net(), (16, 8), "cpu", **kw)[:2] == ("bf16", True)
    forced = resolve_precision("auto", Net(), (16, 8), "cpu", channels_last=False, **kw)
    assert forced[:2] == ("bf16", False) and "channels_last=False (as set)" in forced[2]
    assert resolve_precision("none", Net(), (16, 8), "cpu", **kw)[:2] == ("none", False)


def test_probe_key_does_not_follow_the_thread_count():
    """The share changes with the processes beside a run; the probe's cached answer for a
    model on a machine must not (the key names the machine's core count instead)."""
    net = torch.nn.Conv2d(3, 4, 3)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = probe_key(net, (16, 8), "cpu", mode="extract")
        torch.set_num_threads(2)
        two = probe_key(net, (16, 8), "cpu", mode="extract")
    finally:
        torch.set_num_threads(n)
    assert one == two and f"x{os.cpu_count()}" in one and "threads=" not in one
