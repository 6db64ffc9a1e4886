"""The README's commands run as written.

Every ``adaptreid`` command in the README's bash blocks must parse, and its ``--config`` preset
must load with its overrides; every ``make`` target must exist. The quick ones are run for
real: the quick-start follow-ups on a (shrunk) demo run, and the ``data`` commands on
``../shared`` when it is there.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO_TINY, adapt_args, train_tiny_source, write_identity_market

from adaptreid.cli import build_parser, main
from adaptreid.config import load_config

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHARED = ROOT.parent / "shared"


def readme_commands() -> list[str]:
    """Command lines of the README's ```bash blocks (continuations joined, comments cut)."""
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def adaptreid_argv(command: str) -> list[str] | None:
    """The argv after ``adaptreid`` (or ``-m adaptreid.cli``), else None."""
    words = shlex.split(command)
    for i, w in enumerate(words):
        if w == "adaptreid" or (w == "adaptreid.cli" and i and words[i - 1] == "-m"):
            return words[i + 1 :]
    return None


def test_readme_has_the_two_quick_start_commands():
    commands = readme_commands()
    assert commands[:2] == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert "$(BIN)/adaptreid demo" in makefile and "pytest" in makefile
    for cmd in commands:
        if cmd.startswith("make "):
            target = cmd.split()[1]
            assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), cmd


def test_every_readme_command_parses_and_its_config_loads():
    parser = build_parser()
    seen = 0
    for cmd in readme_commands():
        argv = adaptreid_argv(cmd)
        if argv is None:
            continue
        seen += 1
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # argparse's way of refusing
            pytest.fail(f"README command does not parse ({e}): {cmd}")
        config = getattr(args, "config", None)
        if config and args.command in ("train", "adapt"):
            # raises on a bad path or key, and on a key the command would ignore
            load_config(config, args.overrides, command=args.command)
    assert seen >= 15


def test_quick_start_follow_ups_run_as_written(tmp_path, monkeypatch, capsys):
    """``adaptreid demo`` (shrunk with overrides to take seconds), then the README's
    follow-up commands exactly as written, from the same folder."""

    monkeypatch.chdir(tmp_path)
    assert main(["demo", "-q", *DEMO_TINY]) == 0
    follow_ups = [
        c
        for c in readme_commands()
        if (argv := adaptreid_argv(c)) and any("runs/demo/" in a for a in argv)
    ]
    assert {adaptreid_argv(c)[0] for c in follow_ups} >= {"report", "export", "cluster", "evaluate"}
    assert {"embed", "search"} <= {adaptreid_argv(c)[0] for c in follow_ups}
    for cmd in follow_ups:
        # "Use the adapted model" names a query image of the full demo (identities 101-150
        # are its test identities); the shrunk demo's test identities start at 9
        cmd = cmd.replace("/query/0101_c1s1_000001_00.png", "/query/0009_c1s1_000001_00.png")
        assert main(adaptreid_argv(cmd)) == 0, cmd
    out = capsys.readouterr().out
    assert "recommended eps:" in out
    assert (tmp_path / "runs/demo/msplr/checkpoints/best.onnx").is_file()
    assert (tmp_path / "runs/demo/msplr/report.md").is_file()
    # "Use the adapted model": the features file, the search pages, report.html with clusters
    assert "wrote 18 features" in out and out.count("page: runs/demo/search") == 2
    for name in ("gallery.npz", "search.html", "search-rerank.html", "msplr/labels/step_1.npz"):
        assert (tmp_path / "runs/demo" / name).is_file(), name
    from adaptreid.rundir.step_labels import load_step_labels

    step1 = load_step_labels(tmp_path / "runs/demo/msplr/labels/step_1.npz")
    assert len(step1.paths) == len(step1.labels) == len(step1.camids) == 48  # target train
    assert (step1.labels >= 0).any() and all(Path(p).is_file() for p in step1.paths)
    report = (tmp_path / "runs/demo/msplr/report.html").read_text()
    assert "Pseudo-label clusters per step" in report and "data:image/png;base64," in report
    # ... and its Python example, as written: the same features as adaptreid embed's
    text = README.read_text()
    section = text[text.index("## Use the adapted model") :]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md (Use the adapted model)", "exec"), scope)
    saved, gallery = scope["saved"], scope["gallery"]
    assert [Path(p).name for p in saved.paths] == [p.name for p in scope["gallery_paths"]]
    np.testing.assert_allclose(gallery, saved.features, atol=1e-6)
    assert scope["hits"].indices[0, 0] == 0 and scope["hits"].distances[0, 0] < 1e-3


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared (real data) is not beside the repo")
def test_data_commands_on_shared_run_as_written(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    ran = 0
    for cmd in readme_commands():
        argv = adaptreid_argv(cmd)
        if argv and argv[0] == "data":
            assert main(argv) == 0, cmd
            ran += 1
    assert ran >= 2
    out = capsys.readouterr().out
    assert "market1501" in out and "train" in out


def test_add_a_method_example_runs(tmp_path):
    """The "Add a method" section's code, as written, registers a method that the loop runs."""
    import importlib.util
    import sys

    import torch

    from adaptreid.engine.loop import adapt

    text = README.read_text()
    section = text[text.index("## Add a method") :]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    name = "adaptreid.methods.my_method"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "adaptreid.methods"
    sys.modules[name] = module
    try:
        exec(compile(code, "README.md (Add a method)", "exec"), module.__dict__)
        torch.set_num_threads(1)
        ckpt = train_tiny_source(tmp_path)
        tgt = write_identity_market(
            tmp_path / "tgt", ids=tuple(range(30, 38)), test_ids=(50, 51), seed=5
        )
        args = adapt_args(tmp_path, ckpt, tgt, "mine", "method.epochs=1", "adapt.max_steps=1")
        args = [a for a in args if not a.startswith(("method.freeze", "train.freeze_epochs"))]
        cfg = load_config("configs/base/recipe.yaml", ["method.name=my_method", *args])
        assert cfg.method.name == "my_method" and cfg.method.epochs == 1
        run = adapt(cfg, verbose=False)
        assert (run.path / "report.md").is_file()
        with pytest.raises(Exception, match="freeze_epochs"):
            load_config(
                "configs/base/recipe.yaml",
                ["method.name=my_method", "train.freeze_epochs=3"],
                command="adapt",
            )
    finally:
        sys.modules.pop(name, None)
        from adaptreid.registry import METHOD_OPTIONS, METHODS

        METHODS._items.pop("my_method", None)
        METHOD_OPTIONS._items.pop("my_method", None)
