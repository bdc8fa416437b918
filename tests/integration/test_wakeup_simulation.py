"""On Ray, the exchange waits on the engine's doorbell (fedpriv.runtime.flower_wakeup)
instead of polling, and runs give what they gave with polling; Flower's functions are
back in place after each run, and a Flower that changed stops the run with the reason."""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
from flwr.server.superlink.fleet.vce import vce_api

from fedpriv import load_config, run
from fedpriv.runtime import exchange, flower_wakeup, simulation
from fedpriv.strategies.horizontal import async_family

pytestmark = pytest.mark.simulation

SMALL = ["num_clients=3", "rounds=2", "data=wine", "model=logreg"]


@pytest.fixture
def doorbells(monkeypatch) -> list[bool]:
    """One entry per wait for replies: True if it waited on the engine's doorbell."""
    used: list[bool] = []

    def spy(grid: object) -> flower_wakeup.Doorbell:
        bell = flower_wakeup.reply_doorbell(grid)
        bells = flower_wakeup._active
        used.append(bells is not None and bell is bells.to_server)
        return bell

    monkeypatch.setattr(exchange, "reply_doorbell", spy)
    monkeypatch.setattr(async_family, "reply_doorbell", spy)
    return used


def polling() -> contextlib.AbstractContextManager[object]:
    return mock.patch.object(simulation, "wake_on_store", contextlib.nullcontext)


@pytest.mark.parametrize(
    "overrides",
    [SMALL, ["family=vertical", "rounds=1", "data=wine"]],
    ids=["horizontal", "vertical"],
)
def test_wake_ups_give_the_results_polling_gave(tmp_path, doorbells, overrides) -> None:
    flower = (vce_api.add_messages_to_queue, vce_api.put_message_into_state)
    woken = run(load_config([*overrides, f"output_dir={tmp_path / 'woken'}"]))
    assert doorbells and all(doorbells)  # every exchange was woken by the engine
    assert (vce_api.add_messages_to_queue, vce_api.put_message_into_state) == flower
    doorbells.clear()
    with polling():
        polled = run(load_config([*overrides, f"output_dir={tmp_path / 'polled'}"]))
    assert doorbells and not any(doorbells)
    # Replies are summed in arrival order, which wake-ups change: equal to float tolerance.
    keys = ("round", "accuracy", "loss", "bytes_up", "bytes_down")
    assert [{k: pytest.approx(r[k], rel=1e-6) for k in keys} for r in polled.history] == [
        {k: r[k] for k in keys} for r in woken.history
    ]


def test_an_asynchronous_run_waits_on_the_doorbell(tmp_path, doorbells) -> None:
    config = load_config([*SMALL, "strategy=fedasync", f"output_dir={tmp_path}"])
    result = run(config)
    assert len(result.history) == 2 and result.final["accuracy"] is not None
    assert doorbells and all(doorbells)


def test_a_changed_flower_stops_the_run_with_the_reason(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(flower_wakeup.PINNED, "vce_api.run_api", "0" * 16)
    with pytest.raises(RuntimeError, match=r"vce_api\.run_api \(pinned 0{16}"):
        run(load_config([*SMALL, f"output_dir={tmp_path}"]))
    assert flower_wakeup._active is None
