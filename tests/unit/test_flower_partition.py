"""partition=flwr: Flower's own partitioners give fedpriv exactly the clients they give
when called directly on the same labels and seed, and bad options say which key."""

from __future__ import annotations

import json
import subprocess
import sys

import flwr_datasets.partitioner as flwr_partitioner
import numpy as np
import pytest
from datasets import Dataset

from fedpriv import ConfigError, load_config, run
from fedpriv.data import PARTITIONS, label_histograms
from fedpriv.data.flower_partition import PARTITIONERS

#: Labels with unequal classes, so label-driven partitioners have something to skew.
LABELS = np.random.default_rng(7).choice(10, size=1_200, p=np.linspace(1, 3, 10) / 20)

#: Each offered partitioner with the options a test runs it with (besides the seed).
CASES = {
    "IidPartitioner": {},
    "DirichletPartitioner": {"alpha": 0.3, "min_partition_size": 5},
    "ShardPartitioner": {"num_shards_per_partition": 3},
    "PathologicalPartitioner": {"num_classes_per_partition": 3},
    "LinearPartitioner": {},
    "SquarePartitioner": {},
    "ExponentialPartitioner": {},
}
#: Those that leave samples out by design: a shard remainder; classes no client drew.
LEAVE_SAMPLES_OUT = {"ShardPartitioner", "PathologicalPartitioner"}


def fedpriv_split(partitioner: str, options: dict, num_clients: int, seed: int):
    spec = PARTITIONS.create({"name": "flwr", "partitioner": partitioner, "options": options})
    return spec.split(LABELS, num_clients, seed)


def flower_split(partitioner: str, options: dict, num_clients: int, seed: int, labels=LABELS):
    """The oracle: the partitioner called as a Flower baseline does, on a shuffled
    Dataset of the same labels (FederatedDataset's shuffle=True, seed=seed)."""
    cls = getattr(flwr_partitioner, partitioner)
    kwargs = dict(options)
    if partitioner not in ("IidPartitioner", "LinearPartitioner", "SquarePartitioner",
                           "ExponentialPartitioner"):  # fmt: skip
        kwargs.update(partition_by="label", seed=seed)
    flower = cls(num_partitions=num_clients, **kwargs)
    rows = Dataset.from_dict({"label": labels, "row": np.arange(len(labels))})
    flower.dataset = rows.shuffle(seed=seed)
    return [np.array(flower.load_partition(i)["row"]) for i in range(num_clients)]


def test_every_offered_partitioner_is_covered_here():
    assert set(CASES) == set(PARTITIONERS)


@pytest.mark.parametrize("partitioner", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 11])
def test_same_clients_as_the_flower_partitioner_for_the_same_seed(partitioner, seed):
    options = CASES[partitioner]
    ours = fedpriv_split(partitioner, options, 6, seed)
    theirs = flower_split(partitioner, options, 6, seed)
    assert [sorted(p) for p in ours] == [sorted(p) for p in theirs]
    assert all(len(p) > 0 for p in ours)


@pytest.mark.parametrize("partitioner", ["IidPartitioner", "DirichletPartitioner"])
def test_the_seed_changes_the_clients(partitioner):
    """Guards the oracle comparison: were the seed ignored, both sides would agree
    trivially; here it must change what each client holds."""
    first = fedpriv_split(partitioner, CASES[partitioner], 6, 0)
    second = fedpriv_split(partitioner, CASES[partitioner], 6, 1)
    assert any(set(a) != set(b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("partitioner", sorted(CASES))
def test_no_sample_goes_to_two_clients_and_the_disjoint_ones_use_all(partitioner):
    parts = fedpriv_split(partitioner, CASES[partitioner], 5, 3)
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)  # disjoint
    assert joined.min() >= 0 and joined.max() < len(LABELS)
    if partitioner not in LEAVE_SAMPLES_OUT:
        assert np.array_equal(np.sort(joined), np.arange(len(LABELS)))


def test_pathological_gives_each_client_its_classes_only():
    parts = fedpriv_split("PathologicalPartitioner", {"num_classes_per_partition": 2}, 5, 0)
    assert all(len(np.unique(LABELS[p])) <= 2 for p in parts)


def test_without_the_dataset_shuffle_a_seedless_partitioner_cuts_contiguous_blocks():
    spec = PARTITIONS.create({"name": "flwr", "shuffle_dataset": False})
    parts = spec.split(LABELS, 4, 5)
    assert [p.tolist() for p in parts] == [list(range(i * 300, (i + 1) * 300)) for i in range(4)]


# ------------------------------------------- fedpriv's own partitioners beside Flower's


def test_fedpriv_iid_gives_the_same_sizes_as_flowers():
    """Same sizes (the first len % clients get one more); the members differ, since
    fedpriv permutes indices with its own generator rather than shuffling a Dataset."""
    for clients in (3, 7, 11):
        ours = PARTITIONS.create({"name": "iid"}).split(LABELS, clients, 0)
        theirs = fedpriv_split("IidPartitioner", {}, clients, 0)
        assert [len(p) for p in ours] == [len(p) for p in theirs]


@pytest.mark.parametrize("alpha", [0.5])
def test_fedpriv_and_flower_dirichlet_mean_the_same_alpha(alpha):
    """Both give each client a Dir(alpha) share of every class, so a client's share of a
    class has variance (1/N)(1 - 1/N)/(N·alpha + 1) (the Dirichlet marginal) under both.
    Checked against that formula over 30 seeds; the standard error of each mean is
    about 3 %, so 15 % would still catch another convention (Dir over a client's classes,
    or alpha scaled by N). Their indices differ: the two draw from their generators in
    a different order."""
    labels = np.repeat(np.arange(10), 200)
    clients = 10

    def mean_share_variance(spec) -> float:
        variances = []
        for seed in range(30):
            hist = np.array(label_histograms(labels, spec.split(labels, clients, seed), 10))
            variances.append((hist / hist.sum(axis=0, keepdims=True)).var())
        return float(np.mean(variances))

    theory = (1 / clients) * (1 - 1 / clients) / (clients * alpha + 1)
    ours = PARTITIONS.create({"name": "dirichlet", "alpha": alpha, "min_samples": 1})
    flower = PARTITIONS.create(
        {"name": "flwr", "partitioner": "DirichletPartitioner",
         "options": {"alpha": alpha, "min_partition_size": 1}}
    )  # fmt: skip
    assert mean_share_variance(ours) == pytest.approx(theory, rel=0.15)
    assert mean_share_variance(flower) == pytest.approx(theory, rel=0.15)


# ------------------------------------------------------------------------------ errors


def problems(*overrides: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(["partition=flwr", *overrides])
    return str(caught.value)


def test_unknown_partitioner_lists_the_offered_ones():
    message = problems("partition.partitioner=Dirichlet")
    assert "partition.partitioner='Dirichlet' is not offered; choose one of: " in message
    assert ", ".join(PARTITIONERS) in message


def test_bad_options_name_the_bad_key():
    message = problems(
        "partition.partitioner=DirichletPartitioner",
        "+partition.options.alfa=0.5",
        "+partition.options.num_partitions=3",
        "+partition.options.seed=1",
        "+partition.options.partition_by=color",
    )
    assert "partition.options.alfa is not a parameter of DirichletPartitioner; its " in message
    assert "parameters are: alpha, min_partition_size, self_balancing, shuffle" in message
    assert "partition.options.num_partitions is set by fedpriv from num_clients" in message
    assert "partition.options.seed is set by fedpriv from the experiment's seed" in message
    assert "partition.options.partition_by is 'color'; fedpriv partitions by 'label'" in message
    assert "partition.options.alpha is required by DirichletPartitioner" in message


def test_options_must_be_a_mapping():
    assert "partition.options='alpha' has the wrong type" in problems("partition.options=alpha")


def test_a_value_flower_refuses_is_a_config_error_naming_it():
    config = load_config(["partition=flwr_dirichlet", "partition.options.alpha=-1"])
    with pytest.raises(
        ConfigError, match=r"partition.options=\{'alpha': -1, .*refused by flwr-datasets: Alpha"
    ):
        config.federated_data()


def test_without_flwr_datasets_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "flwr_datasets", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "flwr_datasets.partitioner", None)
    message = problems("partition.partitioner=IidPartitioner")
    assert "partition.partitioner='IidPartitioner' needs the flwr-datasets package" in message
    assert "pip install 'fedpriv[flwr-datasets]'" in message


# --------------------------------------------------------------------------- whole run


@pytest.mark.inprocess
def test_a_run_partitioned_by_flower_trains_on_flowers_clients(make_config):
    config = make_config(
        "partition=flwr_dirichlet", "partition.options.alpha=0.5", "data=digits", "seed=3"
    )
    result = run(config)
    assert result.status == "completed"
    assert all(r["contributors"] == 4 for r in result.history)
    # The clients the run trained on are those Flower's partitioner makes of its labels
    # (their sizes and histograms: which samples, the oracle test above checks).
    digits = config.data.load(3)
    options = {"alpha": 0.5, "min_partition_size": 10, "self_balancing": False, "shuffle": True}
    theirs = flower_split("DirichletPartitioner", options, 4, 3, labels=digits.y_train)
    clients = json.loads((result.run_dir / "clients.json").read_text())
    assert clients["num_examples"] == [len(p) for p in theirs]
    assert clients["label_histograms"] == label_histograms(digits.y_train, theirs, 10)


@pytest.mark.processes
def test_fedpriv_imports_flwr_datasets_only_when_partition_flwr_is_chosen():
    """Importing fedpriv and validating another partition must not pull in Hugging Face
    datasets and pyarrow (seconds of imports, and an optional extra)."""
    probe = (
        "import json, sys\n"
        "from fedpriv import load_config\n"
        "load_config(['partition=dirichlet'])\n"
        "before = sorted({m.split('.')[0] for m in sys.modules} & {'flwr_datasets', 'datasets'})\n"
        "load_config(['partition=flwr_dirichlet'])\n"
        "print(json.dumps([before, 'flwr_datasets' in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=180
    )
    assert json.loads(done.stdout.splitlines()[-1]) == [[], True]
