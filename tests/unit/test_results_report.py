"""Results directory writing and `fedpriv report`."""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest

from fedpriv.cli import main as cli
from fedpriv.report import (
    CSV_COLUMNS,
    AttackSuccess,
    attack_success,
    find_runs,
    format_table,
    group_runs,
    report,
)
from fedpriv.report_plots import (
    MAX_EPSILON_RUNS,
    client_epsilons,
    membership_points,
    plot_per_client_epsilon,
    plot_privacy_utility,
)
from fedpriv.report_runs import attack_text
from fedpriv.results import FRAME_COLUMNS, Result, RunDirectory, read_metrics, write_atomic


def fake_run(path, strategy="fedavg", accuracies=(0.5, 0.8), *, config=None, seed=0,
             summary=None, record=None, audit=None):  # fmt: skip
    """A finished run directory as fedpriv.results writes it. ``config``: written as
    config.yaml (with ``seed`` and ``output_dir`` filled in); ``summary``: extra summary
    fields; ``record(round)``: extra fields of that round's metrics line; ``audit``:
    written as audit.json (attack name -> result, as ``fedpriv audit`` writes it)."""
    out = RunDirectory(path)
    if audit is not None:
        out.write_json("audit.json", audit)
    if config is not None:
        out.write_config({**config, "seed": seed, "output_dir": str(path)})
    out.start_metrics()
    for i, acc in enumerate(accuracies, start=1):
        extra = record(i) if record else {}
        out.append_round({"round": i, "accuracy": acc, "loss": 1 - acc, "bytes_up": 100,
                          "bytes_down": 200, "seconds": 0.5, "elapsed": i * 0.5,
                          "clients": [], "rejected": [], **extra})  # fmt: skip
    out.write_json("summary.json", {
        "strategy": strategy, "family": "horizontal", "dataset": "digits", "partition": "iid",
        "model": "mlp", "num_clients": 3, "seed": seed, "rounds": len(accuracies),
        "final": {"accuracy": accuracies[-1], "loss": 1 - accuracies[-1]},
        "bytes": {"up": 100 * len(accuracies), "down": 200 * len(accuracies)}, "seconds": 1.0,
        **(summary or {}),
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


def test_cli_study_report_names_the_bad_study_or_paths(tmp_path, capsys):
    assert cli(["report", str(tmp_path), "--study", "nonsense"]) == 2
    assert "'nonsense' is not a study preset; choose from: " in capsys.readouterr().err
    assert cli(["report", str(tmp_path), str(tmp_path), "--study", "noniid"]) == 2
    assert "--study reads one sweep directory, got 2 paths" in capsys.readouterr().err


def test_result_load_needs_a_finished_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no summary\.json"):
        Result.load(tmp_path)


# Seed groups, the tidy CSV's new columns, every plot and the per-group table.

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# report.csv's columns: the original sixteen in their order, then those added since.
EXPECTED_COLUMNS = [
    "run", "family", "strategy", "dataset", "partition", "model", "num_clients", "seed",
    "round", "accuracy", "loss", "bytes_up", "bytes_down", "seconds", "elapsed", "epsilon",
    "group", "consensus_distance", "membership_auc", "inversion_mse", "label_inference_accuracy",
    "status", "contributors",
]  # fmt: skip
SEEDS = (0, 1, 2)


def config(**changes):
    """A resolved config.yaml's content (the shape fedpriv writes), ``a__b=v`` setting a.b."""
    base = {
        "data": {"name": "digits", "test_fraction": 0.2},
        "partition": {"name": "dirichlet", "alpha": 0.5},
        "model": {"name": "mlp", "hidden": [128]},
        "strategy": {"name": "fedavg", "fraction_train": 1.0},
        "family": {"name": "horizontal"},
        "privacy": {"name": "none"},
        "crypto": {"name": "none"},
        "num_clients": 3,
        "rounds": 3,
    }
    for key, value in changes.items():
        *groups, leaf = key.split("__")
        node = base
        for group in groups:
            node = node.setdefault(group, {})
        node[leaf] = value
    return base


def read_csv(path):
    with path.open() as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000, path


def table_rows(markdown):
    """A Markdown table as dicts, header -> cell."""
    lines = markdown.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [
        dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
        for line in lines[2:]
    ]


def mean_std(cell):
    mean, std = cell.split("±")
    return float(mean), float(std)


def seed_sweep(root, alphas=(0.5, 1.0), rounds=3):
    """``len(alphas)`` settings × 3 seeds; returns {alpha: {seed: accuracies}}."""
    written = {}
    for alpha in alphas:
        for seed in SEEDS:
            accuracies = tuple(0.3 + 0.1 * r + 0.02 * seed + alpha / 10 for r in range(rounds))
            fake_run(
                root / f"alpha{alpha}-seed{seed}",
                accuracies=accuracies,
                config=config(partition__alpha=alpha),
                seed=seed,
            )
            written.setdefault(alpha, {})[seed] = accuracies
    return written


def test_seeds_form_groups_named_by_the_varying_key(tmp_path):
    written = seed_sweep(tmp_path / "sweep")
    text = report([tmp_path / "sweep"])
    header, rows = read_csv(tmp_path / "sweep" / "report.csv")
    assert header == EXPECTED_COLUMNS and tuple(header) == CSV_COLUMNS
    assert len(rows) == 2 * len(SEEDS) * 3  # runs × rounds
    for alpha, seeds in written.items():
        members = [r for r in rows if r["group"] == f"partition.alpha={alpha}"]
        assert {int(r["seed"]) for r in members} == set(seeds)
        assert sorted(float(r["accuracy"]) for r in members) == sorted(
            a for accuracies in seeds.values() for a in accuracies
        )
    assert all(r["consensus_distance"] == "" for r in rows)
    out = tmp_path / "sweep"
    for name in ("accuracy.png", "cost_utility.png"):
        assert_png(out / name)
    for name in ("privacy_utility.png", "per_client_epsilon.png", "consensus.png"):
        assert not (out / name).exists()  # no DP, no swarm
    wrote = text.splitlines()[-1].removeprefix("wrote ").split(", ")
    assert sorted(wrote) == sorted(
        str(out / n) for n in ("report.csv", "accuracy.png", "cost_utility.png")
    )
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files


def test_by_group_table_gives_mean_and_std_over_seeds(tmp_path, capsys):
    root = tmp_path / "dp"
    finals = {}
    for target in (1.0, 4.0):
        for seed in SEEDS:
            epsilon = target * (1 + 0.05 * seed)
            per_client = {str(k): epsilon * (1 - 0.1 * k) for k in range(3)}
            accuracy = 0.5 + 0.04 * target + 0.03 * seed**2
            fake_run(
                root / f"eps{target}" / str(seed),
                accuracies=(accuracy / 2, accuracy),
                config=config(privacy__name="dp_sgd", privacy__target_epsilon=target),
                seed=seed,
                record=lambda r, e=epsilon: {"privacy": {"epsilon_max": e / r}},
                summary={
                    "privacy": {
                        "mode": "dp_sgd",
                        "epsilon_max": epsilon,
                        "epsilon_per_client": per_client,
                        "user_level_epsilon": None,
                    }
                },
            )
            finals.setdefault(target, []).append((accuracy, epsilon))
    fake_run(root / "plain", accuracies=(0.5, 0.9), config=config())
    assert cli(["report", str(root), "--by-group", "--markdown"]) == 0
    table = capsys.readouterr().out.split("\n\n")[0]
    rows = {row["group"]: row for row in table_rows(table)}
    assert set(rows) == {
        "privacy=dp_sgd privacy.target_epsilon=1.0",
        "privacy=dp_sgd privacy.target_epsilon=4.0",
        "privacy=none",
    }
    for target, values in finals.items():
        row = rows[f"privacy=dp_sgd privacy.target_epsilon={target}"]
        accuracies, epsilons = zip(*values, strict=True)
        assert row["n"] == "3"
        accuracy, accuracy_std = mean_std(row["accuracy"])
        assert accuracy == pytest.approx(statistics.mean(accuracies), abs=5e-5)
        assert accuracy_std == pytest.approx(statistics.stdev(accuracies), abs=5e-5)
        epsilon, epsilon_std = mean_std(row["ε"])
        assert epsilon == pytest.approx(statistics.mean(epsilons), rel=5e-3)
        assert epsilon_std == pytest.approx(statistics.stdev(epsilons), rel=5e-3)
    assert rows["privacy=none"]["n"] == "1"
    assert rows["privacy=none"]["accuracy"] == "0.9000" and rows["privacy=none"]["ε"] == "-"
    for name in (
        "accuracy.png",
        "privacy_utility.png",
        "cost_utility.png",
        "per_client_epsilon.png",
    ):
        assert_png(root / name)
    assert not (root / "consensus.png").exists()
    _, csv_rows = read_csv(root / "report.csv")
    row = next(r for r in csv_rows if r["run"] == "eps4.0/2" and r["round"] == "2")
    assert float(row["epsilon"]) == pytest.approx(4.0 * 1.1 / 2)  # the round's record


def test_swarm_runs_get_a_consensus_plot_and_column(tmp_path):
    distances = {1: 0.5, 2: 0.05, 3: 0.005}
    swarm = config(strategy={"name": "gossip"}, family__name="swarm")
    fake_run(
        tmp_path / "runs" / "swarm",
        "swarm",
        (0.4, 0.6, 0.7),
        config=swarm,
        record=lambda r: {"swarm": {"mode": "gossip", "consensus_distance": distances[r]}},
    )
    fake_run(tmp_path / "runs" / "fedavg", accuracies=(0.5, 0.7, 0.8), config=config())
    text = report([tmp_path / "runs"], tmp_path / "out")
    _, rows = read_csv(tmp_path / "out" / "report.csv")
    by_run = {(r["run"], int(r["round"])): r for r in rows}
    for round_, distance in distances.items():
        assert float(by_run["swarm", round_]["consensus_distance"]) == distance
        assert by_run["fedavg", round_]["consensus_distance"] == ""
    assert {r["group"] for r in rows} == {
        "strategy=gossip family=swarm",
        "strategy=fedavg family=horizontal",
    }
    assert_png(tmp_path / "out" / "consensus.png")
    assert str(tmp_path / "out" / "consensus.png") in text
    assert not (tmp_path / "out" / "per_client_epsilon.png").exists()


def test_group_labels_name_only_what_tells_groups_apart(tmp_path):
    def labels(*configs):
        results = [
            Result.load(fake_run(tmp_path / str(i), config=c, seed=0))
            for i, c in enumerate(configs)
        ]
        return [g.label for g in group_runs(results)]

    # fraction_train exists only for fedavg and proximal_mu only for fedprox: not named
    fedprox = config(strategy={"name": "fedprox", "proximal_mu": 0.1})
    assert labels(config(), fedprox) == ["strategy=fedavg", "strategy=fedprox"]
    # two settings alike but for a key one lacks: it is named, "(unset)" where absent
    assert labels(config(), config(train__lr=0.1)) == ["train.lr=(unset)", "train.lr=0.1"]
    # lists and several varying keys, in config order
    assert labels(config(model__hidden=[64]), config(num_clients=5)) == [
        "model.hidden=[64] num_clients=3",
        "model.hidden=[128] num_clients=5",
    ]


def test_one_setting_is_named_by_its_directory(tmp_path):
    runs = [
        fake_run(tmp_path / "study" / str(seed), config=config(checkpoint_every=seed), seed=seed)
        for seed in SEEDS
    ]  # checkpoint_every is bookkeeping: the same setting
    (group,) = group_runs([Result.load(p) for p in runs])
    assert group.label == "study" and group.seeds == ("0", "1", "2")


def test_where_a_run_was_tracked_does_not_split_its_setting(tmp_path):
    mlflow = {"name": "mlflow", "tracking_uri": None, "experiment": "fedpriv"}
    configs = [config(), config(logger={"name": "none"}), config(logger=mlflow)]  # 1st: older
    runs = [fake_run(tmp_path / "study" / str(i), config=c, seed=i) for i, c in enumerate(configs)]
    (group,) = group_runs([Result.load(p) for p in runs])
    assert group.label == "study" and group.seeds == ("0", "1", "2")


def test_runs_without_config_are_grouped_by_their_summary(tmp_path):
    fake_run(tmp_path / "a" / "0", "fedavg", seed=0)
    fake_run(tmp_path / "a" / "1", "fedavg", seed=1)
    fake_run(tmp_path / "a" / "2", "fedprox", seed=0, config=config())  # ignored: others lack one
    groups = group_runs([Result.load(p) for p in find_runs([tmp_path / "a"])])
    assert [(g.label, len(g.runs)) for g in groups] == [
        ("strategy=fedavg", 2),
        ("strategy=fedprox", 1),
    ]


def test_per_client_epsilon_names_every_run_and_plots_some(tmp_path):
    for target in (1.0, 4.0):
        for seed in range(MAX_EPSILON_RUNS // 2 + 1):  # more runs than one plot draws
            per_client = {"0": target, "1": target / 2, "2": target / 4}
            privacy = {"mode": "dp_sgd", "epsilon_max": target, "epsilon_per_client": per_client}
            fake_run(
                tmp_path / f"eps{target}-{seed}",
                seed=seed,
                config=config(privacy__name="dp_sgd", privacy__target_epsilon=target),
                summary={"privacy": privacy},
            )
    fake_run(tmp_path / "plain", config=config())
    groups = group_runs([Result.load(p) for p in find_runs([tmp_path])])
    runs = client_epsilons(groups)
    assert len(runs) == 2 * (MAX_EPSILON_RUNS // 2 + 1) > MAX_EPSILON_RUNS
    assert runs[0] == (
        "privacy=dp_sgd privacy.target_epsilon=1.0 seed=0",
        {0: 1.0, 1: 0.5, 2: 0.25},
    )
    assert len({name for name, _ in runs}) == len(runs)
    assert plot_per_client_epsilon(groups, tmp_path / "eps.png")
    assert_png(tmp_path / "eps.png")
    plain = [g for g in groups if g.label == "privacy=none"]
    assert client_epsilons(plain) == []
    assert not plot_per_client_epsilon(plain, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


# Attack success from audit.json: report.csv columns, the table's attack column, the
# privacy-utility plot's notes and membership panel.

# The per-run table's columns before attack success was added; they keep their order.
RUN_TABLE_COLUMNS = ["run", "strategy", "data", "clients", "rounds", "accuracy", "loss", "ε",
                     "HE", "MB up", "MB down", "s"]  # fmt: skip
CKKS_REASON = "the server holds the global model only as CKKS ciphertexts"


def membership_audit(auc, *, loss_auc=0.5, tpr=0.02):
    """audit.json's "membership" entry as fedpriv.attacks.runs writes it."""

    def result(attack, value, rate):
        return {
            "attack": attack,
            "auc": value,
            "tpr_at_1pct_fpr": rate,
            "num_members": 100,
            "num_nonmembers": 50,
        }

    return {
        "possible": True,
        "round": 3,
        "loss_threshold": result("loss", loss_auc, 0.01),
        "calibrated": result("calibrated", auc, tpr),
    }


def inversion_audit(mse, label_correct=True):
    return {
        "possible": True,
        "reason": "",
        "label": 3,
        "label_correct": label_correct,
        "mse": mse,
        "gradient_distance": 1e-7,
        "update": "plain SGD",
        "mse_of_mean_guess": 0.09,
    }


def label_audit(accuracy, chance=0.1):
    return {
        "possible": True,
        "inference": {"accuracy": accuracy, "chance": chance, "scored": 900, "known": 50},
        "gradient_noise": 0.0,
        "noise_ratio": 0.0,
        "test_accuracy": 0.8,
    }


def impossible(reason):
    return {"possible": False, "reason": reason}


def dp_summary(epsilon):
    return {"privacy": {"mode": "dp_sgd", "epsilon_max": epsilon, "user_level_epsilon": None}}


def png_width(path):
    """Pixel width from the PNG's IHDR chunk (bytes 16-20, big-endian)."""
    return int.from_bytes(path.read_bytes()[16:20], "big")


def audited_sweep(root):
    """One run per kind of audit.json, plus one without; returns their directories."""
    return {
        "both": fake_run(
            root / "both",
            accuracies=(0.5, 0.7, 0.8),
            audit={
                "membership": membership_audit(0.53, loss_auc=0.51, tpr=0.04),
                "gradient_inversion": inversion_audit(3e-12),
            },
        ),
        "vertical": fake_run(root / "vertical", audit={"label_inference": label_audit(0.91)}),
        "ckks": fake_run(
            root / "ckks",
            audit={
                "membership": impossible(CKKS_REASON),
                "gradient_inversion": impossible("encrypted"),
            },
        ),
        "plain": fake_run(root / "plain"),
    }


def test_attack_success_reads_every_audited_attack(tmp_path):
    runs = audited_sweep(tmp_path)
    both = attack_success(Result.load(runs["both"]))
    assert both == AttackSuccess(
        membership_auc=0.53,
        membership_loss_auc=0.51,
        membership_tpr_at_1pct_fpr=0.04,
        inversion_mse=3e-12,
        inversion_label_correct=True,
        audited=("membership", "gradient_inversion"),
        reasons={},
    )
    vertical = attack_success(Result.load(runs["vertical"]))
    assert (vertical.label_inference_accuracy, vertical.label_inference_chance) == (0.91, 0.1)
    assert vertical.membership_auc is None and vertical.audited == ("label_inference",)
    ckks = attack_success(Result.load(runs["ckks"]))
    assert ckks.reasons == {"membership": CKKS_REASON, "gradient_inversion": "encrypted"}
    assert ckks.membership_auc is None and ckks.inversion_mse is None
    assert attack_success(Result.load(runs["plain"])) == AttackSuccess()
    # attacks a later fedpriv may add are ignored; a broken file is named
    (runs["plain"] / "audit.json").write_text('{"shadow_models": {"possible": true}}')
    assert attack_success(Result.load(runs["plain"])).audited == ()
    (runs["plain"] / "audit.json").write_text('{"membership": ')
    with pytest.raises(ValueError, match=r"audit\.json is not readable JSON"):
        attack_success(Result.load(runs["plain"]))


def test_attack_text_summarizes_one_run_or_a_group():
    run = AttackSuccess(
        membership_auc=0.534,
        inversion_mse=0.0712,
        inversion_label_correct=True,
        audited=("membership", "gradient_inversion"),
    )
    assert attack_text([run]) == "AUC 0.53; MSE 0.071, label ✓"
    assert attack_text([run], sep="\n") == "AUC 0.53\nMSE 0.071, label ✓"
    wrong = AttackSuccess(
        membership_auc=0.6,
        inversion_mse=0.0288,
        inversion_label_correct=False,
        audited=("membership", "gradient_inversion"),
    )
    failed = AttackSuccess(audited=("membership",), reasons={"membership": CKKS_REASON})
    # a group: means over the runs where the attack ran, the CKKS run's n/a left out
    assert attack_text([run, wrong, failed]) == "AUC 0.57; MSE 0.05, label 1/2 ✓"
    assert attack_text([wrong]) == "AUC 0.60; MSE 0.029, label ✗"
    assert attack_text([failed]) == "AUC n/a"
    inferred = AttackSuccess(
        label_inference_accuracy=0.905, label_inference_chance=0.1, audited=("label_inference",)
    )
    assert attack_text([inferred]) == "label acc 0.91 (chance 0.10)"
    assert attack_text([AttackSuccess()]) == attack_text([]) == ""


def test_audits_fill_the_csv_columns_on_every_round(tmp_path):
    audited_sweep(tmp_path / "sweep")
    report([tmp_path / "sweep"])
    header, rows = read_csv(tmp_path / "sweep" / "report.csv")
    assert header == EXPECTED_COLUMNS and tuple(header) == CSV_COLUMNS
    new = ("membership_auc", "inversion_mse", "label_inference_accuracy")
    by_run = {}
    for row in rows:
        by_run.setdefault(row["run"], set()).add(tuple(row[c] for c in new))
    assert by_run == {
        "both": {("0.53", "3e-12", "")},  # one value per run, on each of its 3 rounds
        "vertical": {("", "", "0.91")},
        "ckks": {("", "", "")},  # audited, but the attacks could not run
        "plain": {("", "", "")},  # not audited
    }
    assert sum(r["run"] == "both" for r in rows) == 3


def test_table_has_an_attack_column_and_says_why_not(tmp_path, capsys):
    audited_sweep(tmp_path / "sweep")
    text = report([tmp_path / "sweep"], markdown=True)
    table, notes = text.split("\n\n")
    rows = {row["run"]: row for row in table_rows(table)}
    header = list(rows["both"])
    assert header == [*RUN_TABLE_COLUMNS, "attack"]  # the earlier columns keep their order
    assert {run: row["attack"] for run, row in rows.items()} == {
        "both": "AUC 0.53; MSE 3e-12, label ✓",
        "vertical": "label acc 0.91 (chance 0.10)",
        "ckks": "AUC n/a; MSE n/a",
        "plain": "-",
    }
    assert notes.splitlines()[:2] == [
        f"membership n/a for ckks: {CKKS_REASON}",
        "gradient_inversion n/a for ckks: encrypted",
    ]
    # plain text: the same cells; a report without audits has no attack column
    assert (
        format_table([Result.load(tmp_path / "sweep" / "both")])
        .splitlines()[1]
        .endswith("AUC 0.53; MSE 3e-12, label ✓")
    )
    plain = format_table([Result.load(tmp_path / "sweep" / "plain")], markdown=True)
    assert "attack" not in table_rows(plain)[0] and "n/a" not in plain
    # a broken audit.json stops the report with its path
    (tmp_path / "sweep" / "plain" / "audit.json").write_text("[]")
    assert cli(["report", str(tmp_path / "sweep")]) == 2
    assert "audit.json holds list" in capsys.readouterr().err


def test_by_group_attack_column_is_the_mean_over_seeds(tmp_path, capsys):
    for seed, (auc, mse, correct) in enumerate([(0.52, 0.02, True), (0.56, 0.04, False)]):
        fake_run(
            tmp_path / "dp" / str(seed),
            seed=seed,
            summary=dp_summary(2.0 + seed),
            config=config(privacy__name="dp_sgd"),
            audit={
                "membership": membership_audit(auc),
                "gradient_inversion": inversion_audit(mse, correct),
            },
        )
    fake_run(
        tmp_path / "dp" / "2",
        seed=2,
        summary=dp_summary(2.5),
        config=config(privacy__name="dp_sgd"),
    )  # not audited: left out
    fake_run(tmp_path / "none", config=config())
    assert cli(["report", str(tmp_path), "--by-group", "--markdown"]) == 0
    rows = {r["group"]: r for r in table_rows(capsys.readouterr().out.split("\n\n")[0])}
    assert rows["privacy=dp_sgd"]["n"] == "3"
    assert rows["privacy=dp_sgd"]["attack"] == "AUC 0.54; MSE 0.03, label 1/2 ✓"
    assert rows["privacy=none"]["attack"] == "-"


def test_privacy_utility_plot_gains_a_membership_panel(tmp_path):
    root = tmp_path / "sweep"
    for target, aucs in ((1.0, (0.51, 0.53)), (8.0, (0.58, 0.6))):
        for seed, auc in enumerate(aucs):
            fake_run(
                root / f"eps{target}" / str(seed),
                seed=seed,
                config=config(privacy__name="dp_sgd", privacy__target_epsilon=target),
                summary=dp_summary(target + seed),
                audit={"membership": membership_audit(auc)},
            )
    fake_run(
        root / "plain",
        accuracies=(0.5, 0.9),
        config=config(),
        audit={"membership": membership_audit(0.7)},
    )
    fake_run(
        root / "ckks",
        config=config(crypto__name="ckks"),
        audit={"membership": impossible(CKKS_REASON)},
    )
    text = report([root])
    assert str(root / "privacy_utility.png") in text
    assert_png(root / "privacy_utility.png")
    groups = group_runs([Result.load(p) for p in find_runs([root])])
    labels = [g.label for g in groups]
    points = {labels[i]: sorted(xy) for i, xy in membership_points(groups)}
    # DP groups at their runs' ε; the group without DP at ε = ∞; the CKKS run has no AUC
    assert points == {
        "privacy=dp_sgd crypto=none privacy.target_epsilon=1.0": [(1.0, 0.51), (2.0, 0.53)],
        "privacy=dp_sgd crypto=none privacy.target_epsilon=8.0": [(8.0, 0.58), (9.0, 0.6)],
        "privacy=none crypto=none": [(math.inf, 0.7)],
    }
    single = tmp_path / "single.png"  # the same runs without audits: one panel
    for path in root.rglob("audit.json"):
        path.unlink()
    assert plot_privacy_utility(group_runs([Result.load(p) for p in find_runs([root])]), single)
    assert png_width(root / "privacy_utility.png") > 1.5 * png_width(single)


def test_audits_alone_do_not_make_a_privacy_utility_plot(tmp_path):
    fake_run(tmp_path / "a", audit={"membership": membership_audit(0.6)})
    fake_run(tmp_path / "b", "fedprox", audit={"gradient_inversion": inversion_audit(0.01)})
    text = report([tmp_path])
    assert not (tmp_path / "privacy_utility.png").exists()  # no DP: no ε axis to draw on
    assert "privacy_utility.png" not in text
    assert "AUC 0.60" in text and "MSE 0.01, label ✓" in text


def test_a_result_prints_short_and_becomes_a_dataframe_of_its_rounds(tmp_path):
    privacy = [
        {"epsilon_max": None, "user_level_epsilon": 0.5},  # no client accounted yet
        {"epsilon_max": 2.0, "user_level_epsilon": 0.9},
    ]
    path = fake_run(tmp_path / "run", accuracies=(0.5, 0.75), record=lambda r: {
        "privacy": privacy[r - 1], "contributors": r + 1,
        "clients": [{"node_id": n} for n in range(r + 1)], "rejected": [{"reason": "x"}] * r,
    })  # fmt: skip
    result = Result.load(path)
    assert repr(result) == f"Result({str(path)!r}, status='completed', rounds=2, accuracy=0.7500)"
    frame = result.to_dataframe()
    assert list(frame.columns) == list(FRAME_COLUMNS)
    assert frame["round"].tolist() == [1, 2] and frame["accuracy"].tolist() == [0.5, 0.75]
    assert frame["epsilon"].tolist() == [0.5, 2.0]  # the client ε once there is one
    assert frame["contributors"].tolist() == [2, 3]
    assert frame["clients"].tolist() == [2, 3] and frame["rejected"].tolist() == [1, 2]
    assert frame["bytes_down"].sum() == result.summary["bytes"]["down"]


def test_by_group_table_gives_a_t_interval_and_marks_gaps_within_noise(tmp_path, capsys):
    """Three groups of 3 seeds: a clear best, one far below it, one whose gap is noise.
    The interval is checked against the t quantile from a printed table (t_0.975,2 =
    4.303), not against scipy, which computes it in the report."""
    groups = {
        0.5: (0.90, 0.91, 0.92),  # best: mean 0.91, s = 0.01
        1.0: (0.80, 0.81, 0.82),  # ten points below, same spread: a real gap
        2.0: (0.93, 0.88, 0.90),  # mean 0.9033, s = 0.025: inside the noise
    }
    for alpha, finals in groups.items():
        for seed, accuracy in enumerate(finals):
            fake_run(tmp_path / f"a{alpha}" / str(seed), accuracies=(0.5, accuracy),
                     config=config(partition__alpha=alpha), seed=seed)  # fmt: skip
    assert cli(["report", str(tmp_path), "--by-group", "--markdown"]) == 0
    rows = {r["group"]: r for r in table_rows(capsys.readouterr().out.split("\n\n")[0])}
    best = rows["partition.alpha=0.5"]
    low, high = (float(x) for x in best["95% CI"].strip("[]").split(","))
    half = 4.302652729911275 * 0.01 / math.sqrt(3)
    assert low == pytest.approx(0.91 - half, abs=1e-4)
    assert high == pytest.approx(0.91 + half, abs=1e-4)
    assert best["vs best"] == "best"
    assert rows["partition.alpha=1.0"]["vs best"].startswith("worse (p=")
    assert rows["partition.alpha=2.0"]["vs best"].startswith("within noise (p=")
