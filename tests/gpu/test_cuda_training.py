"""Training on a CUDA GPU (``train.device``): the same steps as on the CPU, DP-SGD's
every clipping mode and its CSPRNG noise on the GPU, a forked warm executor's child
using the GPU, and whole DP + CKKS runs. Skipped without a GPU (CI has none); run
with ``pytest tests/gpu`` on a machine with one (docs/deployment.md, Jetson)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fedpriv import load_config, run
from fedpriv.data import DATASETS
from fedpriv.models import MODELS
from fedpriv.privacy.dp_sgd import DpSgd, train_dp_sgd
from fedpriv.training import TrainConfig, evaluate, train_local

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: run tests/gpu on a machine with one"
)


def digits(n=600):
    data = DATASETS.create({"name": "digits"}).load(seed=0)
    return data.x_train[:n], data.y_train[:n], data.x_test, data.y_test, data


def build(name, data, seed=0):
    torch.manual_seed(seed)
    return MODELS.create({"name": name}).build(data.input_shape, data.num_classes)


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.fixture
def no_tf32():
    """Full float32 on the GPU while devices are compared: cuDNN's convolutions default
    to TF32 (10-bit mantissas), a difference of precision, not of the steps taken."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


def on_gpu_peak(work):
    """Run ``work`` and return the bytes the GPU held at its peak meanwhile."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    work()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_sgd_on_the_gpu_takes_the_cpus_steps(name, no_tf32):
    x, y, x_test, y_test, data = digits()
    trained = {}
    for device in ("cpu", "cuda"):
        model = build(name, data)
        config = TrainConfig(local_epochs=4, lr=0.05, momentum=0.9, device=device)
        peak = on_gpu_peak(lambda m=model, c=config: train_local(m, x, y, c, seed=7))
        assert (peak > 0) == (device == "cuda")  # the GPU did the work, and only then
        assert {p.device.type for p in model.parameters()} == {"cpu"}
        trained[device] = (flat(model), evaluate(model, x_test, y_test, device=device))
    # Other summation orders: close, not equal.
    assert torch.allclose(trained["cpu"][0], trained["cuda"][0], atol=1e-3, rtol=1e-3)
    assert abs(trained["cpu"][1]["accuracy"] - trained["cuda"][1]["accuracy"]) < 0.02
    assert trained["cuda"][1]["accuracy"] > 0.75


@pytest.mark.parametrize("mode", ["bookkeeping", "ghost", "hooks"])
def test_dp_sgd_on_the_gpu_clips_as_on_the_cpu(mode, no_tf32):
    """σ near zero and seeded batches: the clipped steps must agree across devices, and
    the accounting (σ, q, steps) must be identical."""
    x, y, _, _, data = digits()
    dp = DpSgd(noise_multiplier=1e-6, secure_noise=False, grad_sample_mode=mode,
               max_grad_norm=0.5)  # fmt: skip
    out = {}
    for device in ("cpu", "cuda"):
        model = build("mlp", data)
        train = TrainConfig(batch_size=64, lr=0.5, device=device)
        stats, spent = train_dp_sgd(model, x, y, train, dp, seed=3, planned_steps=10)
        assert {p.device.type for p in model.parameters()} == {"cpu"}
        out[device] = (flat(model), spent, stats.steps)
    assert out["cpu"][1] == out["cuda"][1] and out["cpu"][2] == out["cuda"][2]
    assert torch.allclose(out["cpu"][0], out["cuda"][0], atol=1e-4)


@pytest.mark.parametrize("secure_mode", [False, True])
def test_dp_noise_is_drawn_for_the_gpu_and_has_its_size(secure_mode):
    """The GPU run's noise has the std the accountant was told: one step of zero
    gradients (lr 1, zero inputs and a bias-free model) moves each weight by noise/B.
    25,600 weights: the std's estimate is within ±0.5 % (one standard error) of σ·C."""
    x = np.zeros((4000, 256), np.float32)
    y = np.zeros(4000, np.int64)
    model = torch.nn.Linear(256, 100, bias=False)
    torch.nn.init.zeros_(model.weight)
    dp = DpSgd(noise_multiplier=2.0, max_grad_norm=1.0, secure_mode=secure_mode,
               grad_sample_mode="hooks")  # fmt: skip
    train = TrainConfig(batch_size=4000, lr=1.0, momentum=0.0, device="cuda")
    train_dp_sgd(model, x, y, train, dp, seed=0, planned_steps=1, max_steps=1)
    assert model.weight.device.type == "cpu"
    # Opacus divides the noised sum by the expected batch size (4000).
    std = float(model.weight.detach().std() * 4000)
    assert 1.95 < std < 2.05  # ±2.5 %: five standard errors


def test_a_forked_warm_process_trains_on_the_gpu():
    """The warm executor imports torch and forks per task: the child, not the parent,
    must be the first to touch CUDA (a parent that did would leave the child unable to)."""
    script = textwrap.dedent(
        """
        import os, sys
        from fedpriv.deployment.executor import warm_up
        warm_up()
        import numpy as np, torch
        from fedpriv.training import TrainConfig, train_local
        pid = os.fork()
        if pid == 0:
            model = torch.nn.Linear(4, 2)
            x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
            y = (x[:, 0] > 0).astype(np.int64)
            train_local(model, x, y, TrainConfig(device="cuda"), seed=0)
            os._exit(0 if torch.cuda.max_memory_allocated() > 0 else 3)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize(
    "family", [["family=horizontal", "crypto=ckks"], ["family=swarm", "strategy=dinno"]]
)
def test_a_whole_dp_run_on_the_gpu_spends_what_the_cpu_run_spends(tmp_path, family):
    base = ["engine=inprocess", "num_clients=3", "rounds=2", "privacy=dp_sgd",
            "privacy.target_epsilon=4", *family]  # fmt: skip
    results = {}
    for device in ("cpu", "cuda"):
        config = load_config([*base, f"train.device={device}", f"output_dir={tmp_path / device}"])
        peak = on_gpu_peak(lambda c=config, d=device: results.__setitem__(d, run(c)))
        assert (peak > 0) == (device == "cuda")
    for device, result in results.items():  # each reply says where its node trained
        flags = {c["train-gpu"] for r in result.history for c in r["clients"]}
        assert flags == {int(device == "cuda")}, (device, flags)
    spent = {d: r.summary["privacy"]["epsilon_max"] for d, r in results.items()}
    assert spent["cpu"] == spent["cuda"] <= 4.0 + 1e-6
    accuracy = {
        d: r.history[-1]["swarm"]["accuracy_mean"] if "swarm" in r.history[-1]
        else r.history[-1]["accuracy"]
        for d, r in results.items()
    }  # fmt: skip
    assert accuracy["cuda"] > accuracy["cpu"] - 0.1, accuracy
