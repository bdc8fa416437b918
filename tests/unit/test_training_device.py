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


def test_vertical_refuses_a_named_gpu():
    with pytest.raises(ConfigError) as refused:
        load_config(["family=vertical", "train.device=cuda:0"])
    message = str(refused.value)
    assert "train.device=cuda:0 is not available with family=vertical" in message
    assert "set train.device=auto or cpu" in message


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


class Moves(torch.nn.Linear):
    """A layer that records where it is moved."""

    def __init__(self) -> None:
        super().__init__(3, 2)
        self.moves: list[str] = []

    def to(self, *args, **kwargs):
        self.moves.append(str(args[0]))
        return super().to(*args, **kwargs)


def test_the_model_goes_back_to_the_cpu_after_work_that_failed():
    model = Moves()
    with pytest.raises(RuntimeError), placed(model, "cpu"):
        raise RuntimeError("the step failed")
    assert model.moves == ["cpu", "cpu"]  # there, and back despite the error


def test_training_takes_a_plain_loops_steps_and_reports_its_mean_loss():
    """An independent computation of ``train_local`` on the named device: the same
    batches (the seeded permutation) through torch's SGD, loss summed per example."""
    x, y = data()
    config = TrainConfig(local_epochs=2, batch_size=16, lr=0.1, momentum=0.9, device="cpu")
    torch.manual_seed(0)
    model = MODELS.create({"name": "logreg"}).build((5,), 2)
    torch.manual_seed(0)
    expected = MODELS.create({"name": "logreg"}).build((5,), 2)
    stats = train_local(model, x, y, config, seed=3)
    optimizer = torch.optim.SGD(expected.parameters(), lr=0.1, momentum=0.9)
    generator, losses, correct = torch.Generator().manual_seed(3), [], 0
    for _ in range(2):
        for batch in torch.randperm(len(y), generator=generator).split(16):
            inputs, targets = torch.from_numpy(x)[batch], torch.from_numpy(y)[batch]
            optimizer.zero_grad()
            logits = expected(inputs)
            loss = torch.nn.functional.cross_entropy(logits, targets)
            loss.backward()
            optimizer.step()
            losses.append(loss.item() * len(batch))
            correct += int((logits.argmax(1) == targets).sum())
    for got, want in zip(model.parameters(), expected.parameters(), strict=True):
        assert torch.equal(got, want)
    assert stats.loss == pytest.approx(sum(losses) / (2 * len(y)), rel=1e-12)
    assert stats.accuracy == correct / (2 * len(y)) and not stats.on_gpu


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
