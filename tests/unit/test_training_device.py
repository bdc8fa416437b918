"""``train.device``: a bad name is refused before a run; a GPU named on a node without
one is an error naming the node's torch, never a quiet CPU run; models rest on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpriv import ConfigError, load_config, run
from fedpriv.models import MODELS
from fedpriv.privacy.dp_sgd import DpSgd, train_dp_sgd
from fedpriv.training import TrainConfig, placed, torch_device, train_local

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


def data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "CUDA", "mps", "cuda:x", ""])
def test_a_device_name_outside_the_allowed_ones_is_refused_by_name(bad):
    with pytest.raises(ConfigError) as refused:
        load_config([f"train.device='{bad}'"])
    assert f"train.device={bad!r} must be one of: auto, cpu, cuda, cuda:N" in str(refused.value)


@pytest.mark.parametrize("good", ["auto", "cpu", "cuda", "cuda:1"])
def test_the_allowed_names_validate(good):
    """Whether the node has that GPU is the node's to say: the server cannot know."""
    assert load_config([f"train.device={good}"]).train.device == good


def test_vertical_refuses_a_named_gpu_and_runs_auto_on_the_cpu():
    with pytest.raises(ConfigError) as refused:
        load_config(["family=vertical", "train.device=cuda"])
    assert "train.device=cuda is not available with family=vertical" in str(refused.value)
    assert load_config(["family=vertical"]).train.device == "auto"


@NO_GPU
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_a_gpu_named_on_a_node_without_one_is_an_error_not_a_cpu_run(name):
    with pytest.raises(ConfigError) as refused:
        torch_device(name)
    message = str(refused.value)
    assert f"train.device={name}" in message and torch.__version__ in message
    assert "train.device=auto or cpu" in message


@NO_GPU
def test_auto_is_the_cpu_without_a_gpu():
    assert torch_device("auto") == torch.device("cpu")


def test_the_model_is_back_on_the_cpu_after_work_that_failed():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(RuntimeError), placed(model, "auto"):
        raise RuntimeError("the step failed")
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_training_on_the_named_cpu_equals_the_default():
    """``device=cpu`` and the default take the same steps on a machine without a GPU
    (with one, tests/gpu compares the two devices)."""
    x, y = data()
    results = []
    for device in ("cpu", "auto"):
        torch.manual_seed(0)
        model = MODELS.create({"name": "logreg"}).build((5,), 2)
        train_local(model, x, y, TrainConfig(device=device), seed=3)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    if torch.cuda.is_available():
        pytest.skip("auto is the GPU here: tests/gpu compares the devices")
    assert torch.equal(results[0], results[1])


def test_dp_sgd_leaves_the_model_on_the_cpu_with_its_accounting():
    x, y = data()
    torch.manual_seed(0)
    model = MODELS.create({"name": "mlp"}).build((5,), 2)
    dp = DpSgd(noise_multiplier=1.0, secure_noise=False)
    stats, spent = train_dp_sgd(model, x, y, TrainConfig(batch_size=30), dp, seed=1,
                                planned_steps=4)  # fmt: skip
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert spent["dp-steps"] == stats.steps == 4 and spent["dp-noise-multiplier"] == 1.0
    assert stats.on_gpu is torch.cuda.is_available()


@NO_GPU
@pytest.mark.inprocess
def test_a_run_asking_every_node_for_a_gpu_stops_with_the_nodes_reason(tmp_path):
    config = load_config(["engine=inprocess", "num_clients=2", "rounds=1", "train.device=cuda",
                          f"output_dir={tmp_path / 'run'}"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"this node's torch .* sees no CUDA GPU"):
        run(config)


@NO_GPU
@pytest.mark.inprocess
@pytest.mark.parametrize("family", ["horizontal", "swarm"])
def test_each_reply_says_its_node_trained_on_the_cpu(tmp_path, family):
    """``train-gpu`` in every client entry: how an operator sees that a Jetson used its
    GPU (tests/gpu checks the 1)."""
    result = run(load_config([f"family={family}", "engine=inprocess", "num_clients=2",
                              "rounds=1", "model=logreg", "privacy=dp_sgd",
                              f"output_dir={tmp_path / 'run'}"]))  # fmt: skip
    assert [c["train-gpu"] for c in result.history[0]["clients"]] == [0, 0]
