"""Results directory writing and `fedpriv report`."""

from __future__ import annotations

import csv
import json

import pytest

from fedpriv.cli import main as cli
from fedpriv.report import find_runs, format_table, report
from fedpriv.results import Result, RunDirectory, read_metrics, write_atomic


def fake_run(path, strategy="fedavg", accuracies=(0.5, 0.8)):
    out = RunDirectory(path)
    out.start_metrics()
    for i, acc in enumerate(accuracies, start=1):
        out.append_round({"round": i, "accuracy": acc, "loss": 1 - acc, "bytes_up": 100,
                          "bytes_down": 200, "seconds": 0.5, "elapsed": i * 0.5,
                          "clients": [], "rejected": []})  # fmt: skip
    out.write_json("summary.json", {
        "strategy": strategy, "family": "horizontal", "dataset": "digits", "partition": "iid",
        "model": "mlp", "num_clients": 3, "seed": 0, "rounds": len(accuracies),
        "final": {"accuracy": accuracies[-1], "loss": 1 - accuracies[-1]},
        "bytes": {"up": 100 * len(accuracies), "down": 200 * len(accuracies)}, "seconds": 1.0,
    })  # fmt: skip
    return path


def test_write_atomic_replaces_whole_files(tmp_path):
    target = tmp_path / "a" / "f.json"
    write_atomic(target, "one")
    write_atomic(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]  # no temp files left


def test_torn_last_metrics_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"round": 1}) + "\n" + '{"round": 2, "acc')
    assert read_metrics(path) == [{"round": 1}]


def test_report_finds_runs_and_writes_csv_and_plot(tmp_path):
    fake_run(tmp_path / "sweep" / "0", "fedavg", (0.5, 0.8))
    fake_run(tmp_path / "sweep" / "1", "fedprox", (0.4, 0.6, 0.9))
    (tmp_path / "sweep" / "2").mkdir()  # an unfinished run: no summary.json
    assert len(find_runs([tmp_path / "sweep"])) == 2
    text = report([tmp_path / "sweep"])
    assert "fedprox" in text and "0.9000" in text
    with (tmp_path / "sweep" / "report.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 and {r["strategy"] for r in rows} == {"fedavg", "fedprox"}
    assert rows[-1]["round"] == "3" and float(rows[-1]["accuracy"]) == 0.9
    assert (tmp_path / "sweep" / "accuracy.png").stat().st_size > 1000


def test_cli_report_with_a_reference_line(tmp_path, capsys):
    fake_run(tmp_path / "r")
    (tmp_path / "central.json").write_text('{"accuracy": 0.97}')
    assert (
        cli(
            [
                "report",
                str(tmp_path / "r"),
                "--reference",
                f"centralized={tmp_path / 'central.json'}",
            ]
        )
        == 0
    )
    assert "reference: centralized accuracy 0.9700" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{}")
    assert cli(["report", str(tmp_path / "r"), "--reference", f"x={tmp_path / 'bad.json'}"]) == 2
    assert "has no numeric 'accuracy'" in capsys.readouterr().err


def test_privacy_utility_plot_and_epsilon_column(tmp_path):
    for seed, (eps, acc) in enumerate([(1.0, 0.6), (3.0, 0.75), (8.0, 0.85)]):
        path = fake_run(tmp_path / "sweep" / str(seed), accuracies=(acc,))
        summary = json.loads((path / "summary.json").read_text())
        summary["privacy"] = {"mode": "dp_sgd", "epsilon_max": eps, "user_level_epsilon": None}
        (path / "summary.json").write_text(json.dumps(summary))
        metrics = json.loads((path / "metrics.jsonl").read_text())
        metrics["privacy"] = {"epsilon_max": eps}
        (path / "metrics.jsonl").write_text(json.dumps(metrics) + "\n")
    fake_run(tmp_path / "sweep" / "plain", accuracies=(0.9,))
    text = report([tmp_path / "sweep"])
    assert "privacy_utility.png" in text and (tmp_path / "sweep" / "privacy_utility.png").exists()
    with (tmp_path / "sweep" / "report.csv").open() as handle:
        eps = sorted(r["epsilon"] for r in csv.DictReader(handle))
    assert eps == ["", "1.0", "3.0", "8.0"]
    assert "| 8 |" in format_table([Result.load(tmp_path / "sweep" / "2")], markdown=True)


def test_markdown_table(tmp_path):
    result = Result.load(fake_run(tmp_path / "r"))
    table = format_table([result], markdown=True)
    assert table.splitlines()[0].startswith("| run | strategy")
    header, _, row = ([c.strip() for c in line.split("|")] for line in table.splitlines())
    assert row[header.index("HE")] == "-"  # no encryption


def test_table_shows_encryption_and_its_expansion(tmp_path):
    path = fake_run(tmp_path / "r")
    summary = json.loads((path / "summary.json").read_text())
    summary["crypto"] = {"scheme": "ckks", "expansion": 8.54}
    (path / "summary.json").write_text(json.dumps(summary))
    assert "ckks 8.5×" in format_table([Result.load(path)])


def test_cli_report_errors_clearly_on_missing_dirs(tmp_path, capsys):
    assert cli(["report", str(tmp_path / "nope")]) == 2
    assert "no such run or sweep directory" in capsys.readouterr().err
    assert cli(["frobnicate"]) == 2


def test_result_load_needs_a_finished_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no summary\.json"):
        Result.load(tmp_path)
