"""benchmarks/uda_tables.py table1's rows of a second network family (issue 29: the PCB
source models' own supervised and direct-transfer rows beside the BNNeck ones), from hand-made
run records: each figure is the record's, and the gap closed stays on the first family's."""

from __future__ import annotations

import json

import pytest

from tests.test_selection import _load_script


def _write(folder, records, config=None):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (folder / "config.yaml").write_text(json.dumps(config or {}))
    machine = "AMD EPYC [family 25 model 1]"
    walls = [{"seconds": 600.0, "machine": machine}, {"seconds": 120.0, "machine": machine}]
    (folder / "wall_time.json").write_text(json.dumps(walls))


def _m(map_, r1):
    return {"mAP": map_, "rank1": r1, "rank5": r1 + 0.1, "rank10": r1 + 0.15}


def _cells(row):
    return [c.strip() for c in row.strip("|").split("|")]


def test_table1_other_family_rows(tmp_path):
    tables = _load_script("uda_tables")
    _write(tmp_path / "sup", [{"kind": "final", "stage": "source", **_m(0.50, 0.70)}])
    _write(
        tmp_path / "pcb_src",
        [
            {"kind": "final", "stage": "direct_transfer", **_m(0.20, 0.40)},
            {"kind": "final", "stage": "source", **_m(0.65, 0.80)},
        ],
    )
    _write(tmp_path / "pcb_tgt", [{"kind": "final", "stage": "source", **_m(0.60, 0.78)}])
    _write(
        tmp_path / "run",
        [
            {"kind": "step", "step": 0, **_m(0.10, 0.30)},
            {"kind": "step", "step": 1, **_m(0.40, 0.60)},
        ],
        {"adapt": {"select": "last"}},
    )
    rows = tables.table1(
        tmp_path / "sup",
        [("M", tmp_path / "run")],
        [("PCB", tmp_path / "pcb_tgt")],
        [("PCB", tmp_path / "pcb_src")],
    )[2:]
    cells = {_cells(r)[0]: _cells(r)[1:] for r in rows}
    assert list(cells)[:4] == [
        "supervised on the target",
        "direct transfer (no adaptation)",
        "PCB, supervised on the target",
        "PCB, direct transfer",
    ]
    # the other family's figures, the gap on the first family's rows (10 -> 50)
    assert cells["PCB, supervised on the target"] == [
        "78.0",
        "88.0",
        "93.0",
        "60.0",
        "125%",
        "12 min",
        "Zen 3",
    ]
    assert cells["PCB, direct transfer"] == ["40.0", "50.0", "55.0", "20.0", "25%", "-", "Zen 3"]
    assert cells["M, label-free pick (last)"][3:5] == ["40.0", "75%"]


def test_table1_other_direct_needs_the_record(tmp_path):
    tables = _load_script("uda_tables")
    _write(tmp_path / "src", [{"kind": "final", "stage": "source", **_m(0.5, 0.7)}])
    with pytest.raises(SystemExit, match="no 'final' direct_transfer record"):
        tables.direct_transfer(tmp_path / "src")


def test_supervised_row_of_a_source_run_without_its_final_record(tmp_path):
    """A source run whose closing step failed has no 'final' source record: the row reads the
    last evaluated epoch (the kept model under train.keep: last), never an earlier one."""
    tables = _load_script("uda_tables")
    epochs = [
        {"kind": "epoch", "stage": "source", "epoch": 4, "source_mAP": 0.3, "source_rank1": 0.5},
        {"kind": "epoch", "stage": "source", "epoch": 5, "loss": 1.0},
        {"kind": "epoch", "stage": "source", "epoch": 8, "source_mAP": 0.6, "source_rank1": 0.8},
        {"kind": "epoch", "stage": "source", "epoch": 9, "loss": 0.9},
    ]
    _write(tmp_path / "src", epochs)
    assert tables.supervised(tmp_path / "src") == {"mAP": 0.6, "rank1": 0.8}
    _write(tmp_path / "done", [*epochs, {"kind": "final", "stage": "source", **_m(0.61, 0.81)}])
    assert tables.supervised(tmp_path / "done")["mAP"] == 0.61
    _write(tmp_path / "none", epochs[1::2])
    with pytest.raises(SystemExit, match="no source evaluation"):
        tables.supervised(tmp_path / "none")


@pytest.mark.parametrize(
    ("recorded", "name"),
    [
        ("AMD EPYC [family 25 model 1]", "Zen 3"),
        ("AMD EPYC [family 25 model 17 avx512f avx512_bf16]", "Zen 4"),
        ("AMD EPYC [family 26 model 2 avx512f avx512_bf16]", "Zen 5"),
        (
            "NVIDIA H200 (lent device, 16 CPU cores; torch 2.11.0+cu130), 9 runs at once",
            "NVIDIA H200",
        ),
        ("Intel(R) Xeon(R) Platinum 8488C", "Intel(R) Xeon(R) Platinum 8488C"),
    ],
)
def test_cpu_name(recorded, name):
    assert _load_script("uda_tables").cpu_name(recorded) == name


def test_machine_column_joins_a_resumed_runs_machines(tmp_path):
    """A run resumed on another machine names both, in order; none recorded reads '-'."""
    tables = _load_script("uda_tables")
    run = tmp_path / "run"
    run.mkdir()
    entries = [
        {"seconds": 1.0, "machine": "AMD EPYC [family 25 model 1]"},
        {"seconds": 1.0, "machine": "AMD EPYC [family 25 model 1]"},
        {"seconds": 1.0, "machine": "AMD EPYC [family 26 model 2]"},
    ]
    (run / "wall_time.json").write_text(json.dumps(entries))
    assert tables.machine(run) == "Zen 3 + Zen 5"
    (run / "wall_time.json").write_text(json.dumps([{"seconds": 1.0}]))
    assert tables.machine(run) == "-"
    assert tables.machine(tmp_path / "missing") == "-"


def test_table1_names_the_start_of_a_run_without_a_source_model(tmp_path):
    """A fully unsupervised run (issue 26 item 3) starts from ``model.pretrained``: its step-0
    row says so instead of "direct transfer"."""
    tables = _load_script("uda_tables")
    _write(tmp_path / "sup", [{"kind": "final", "stage": "source", **_m(0.50, 0.70)}])
    steps = [
        {"kind": "step", "step": 0, **_m(0.03, 0.10)},
        {"kind": "step", "step": 1, **_m(0.4, 0.6)},
    ]
    config = {
        "adapt": {"select": "last", "init_checkpoint": ""},
        "model": {"pretrained": "w/in.pth"},
    }
    _write(tmp_path / "run", steps, config)
    rows = tables.table1(tmp_path / "sup", [("U", tmp_path / "run")])[2:]
    assert _cells(rows[1])[0] == "no source model: the pretrained weights of in.pth (no adaptation)"
