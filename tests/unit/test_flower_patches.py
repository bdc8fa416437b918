"""fedpriv's patches of Flower's waits (the SuperNode loop, object pulls) apply to the
code they were written for, refuse any other, and change the waits and nothing else."""

from __future__ import annotations

import importlib.util
import inspect
import threading
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import pytest
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

from fedpriv.cli import main as cli_main
from fedpriv.deployment import object_pulls, supernode
from fedpriv.deployment.flower_pins import FlowerChanged
from fedpriv.deployment.processes import supernode_command


def loop_copy(tmp_path: Path, edit: tuple[str, str] | None = None) -> ModuleType:
    """A private copy of Flower's SuperNode loop module (optionally with one edit), so
    that patching it leaves the real one alone."""
    source = inspect.getsource(supernode.flower_loop())
    if edit is not None:
        assert edit[0] in source
        source = source.replace(edit[0], edit[1], 1)
    path = tmp_path / "start_client_internal_copy.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("start_client_internal_copy", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def flower_pull_defaults():
    """Flower's pull defaults, restored after a test that shortens them."""
    saved = {name: dict(f.__kwdefaults__) for name, f in object_pulls.pull_functions().items()}
    yield
    for name, function in object_pulls.pull_functions().items():
        function.__kwdefaults__.update(saved[name])


def test_the_installed_flower_is_the_code_the_patches_were_written_for():
    """Fails when a Flower upgrade changes the patched code: re-read it, re-pin."""
    supernode.check_flower_source(supernode.flower_loop())
    object_pulls.check_pins(
        "test",
        {n: (f, object_pulls.PINNED_SOURCE[n]) for n, f in object_pulls.pull_functions().items()},
    )
    assert supernode.sleep_arguments(inspect.getsource(supernode.flower_loop())) == (3, 0.5, 0.5)
    for function in object_pulls.pull_functions().values():
        defaults = function.__kwdefaults__
        assert {k: defaults[k] for k in object_pulls.FLOWER_BACKOFF} in (
            object_pulls.FLOWER_BACKOFF,
            {"initial_backoff": object_pulls.INITIAL_BACKOFF_S, "backoff_cap": 1.0},
        )


@pytest.mark.parametrize(
    "edit",
    [
        ("time.sleep(3)", "time.sleep(2)"),  # another wait
        ("_push_messages(\n", "_push_messages_v2(\n"),  # another function body
        ('    """Push reply messages to the SuperLink."""', '    """Push replies."""'),
    ],
)
def test_a_changed_supernode_loop_is_refused_before_anything_is_patched(tmp_path, edit):
    module = loop_copy(tmp_path, edit)
    original = module.time
    with pytest.raises(FlowerChanged, match=r"differ|sleep"):
        supernode.patch(module)
    assert module.time is original


def test_the_patched_loop_maps_flowers_waits_to_fedprivs(tmp_path, monkeypatch):
    module = loop_copy(tmp_path)
    push = module._push_messages
    clock = supernode.patch(module, poll_interval=0.05)
    slept: list[float] = []
    monkeypatch.setattr(supernode.time, "sleep", slept.append)
    clock.last_reply = supernode.time.monotonic()
    # What Flower's loop calls, through the name it calls it by.
    module.time.sleep(3)  # a pull found nothing, right after a reply
    module.time.sleep(0.5)  # the reply is not there yet
    module.time.sleep(1.25)  # any other wait is left alone
    assert slept[0] == pytest.approx(0.05) and slept[1:] == [supernode.REPLY_POLL_S, 1.25]
    assert module.time.monotonic is supernode.time.monotonic  # the rest is time's
    assert module._push_messages.__wrapped__ is push


def test_the_idle_wait_grows_with_idleness_up_to_flowers():
    assert supernode.idle_wait(0.0, 0.05) == 0.05
    assert supernode.idle_wait(0.4, 0.05) == 0.05
    assert supernode.idle_wait(10.0, 0.05) == pytest.approx(1.0)
    assert supernode.idle_wait(3600.0, 0.05) == 3.0  # an idle fleet polls as Flower's
    assert supernode.idle_wait(3600.0, 0.05, growth=0.0) == 0.05


def test_a_reply_restarts_the_fast_polling_even_when_sending_failed():
    clock = supernode.LoopClock(0.05)
    calls = []

    def push(**kwargs: object) -> None:
        calls.append(kwargs)
        if len(calls) == 2:
            raise ConnectionError("link down")

    pushed = clock.after_reply(push)
    for attempt in range(2):
        clock.last_reply = supernode.time.monotonic() - 3600  # idle for an hour
        if attempt:
            with pytest.raises(ConnectionError):
                pushed(state="s")
        else:
            pushed(state="s")
        assert supernode.time.monotonic() - clock.last_reply < 60  # now, not an hour ago
    assert calls == [{"state": "s"}, {"state": "s"}]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--poll-interval", "0"], "--poll-interval 0 must be in"),
        (["--poll-interval", "5"], "--poll-interval 5 must be in"),
        (["--idle-growth", "-1"], "--idle-growth -1 must be in"),
    ],
)
def test_bad_poll_settings_are_refused_with_the_allowed_range(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        supernode.main([*argv, "--insecure"])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


class _RecordedWaits(threading.Event):
    """An Event whose timed waits (the pull's backoff) return at once and are recorded."""

    waits: ClassVar[list[float]] = []

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is None:
            return super().wait()
        type(self).waits.append(timeout)
        return False


def _pull_after_misses(misses: int, monkeypatch) -> list[float]:
    """Flower's pull_objects on an object that is missing ``misses`` times; its waits."""
    _RecordedWaits.waits = []
    monkeypatch.setattr(inflatable_utils.threading, "Event", _RecordedWaits)
    monkeypatch.setattr(inflatable_utils.random, "uniform", lambda a, b: 0.0)  # no jitter
    tries = []

    def pull(object_id: str) -> bytes:
        tries.append(object_id)
        if len(tries) <= misses:
            raise ObjectUnavailableError(object_id)
        return b"content"

    assert inflatable_utils.pull_objects(["a"], pull) == {"a": b"content"}
    return _RecordedWaits.waits


def test_object_pulls_retry_sooner_and_still_get_the_object(monkeypatch, flower_pull_defaults):
    flowers = _pull_after_misses(6, monkeypatch)
    object_pulls.shorten_object_pulls()
    object_pulls.shorten_object_pulls()  # idempotent
    ours = _pull_after_misses(6, monkeypatch)
    assert flowers == [1, 2, 4, 8, 10, 10]
    assert ours == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0])


def test_object_pulls_with_other_defaults_are_refused(monkeypatch, flower_pull_defaults):
    monkeypatch.setitem(inflatable_utils.pull_objects.__kwdefaults__, "initial_backoff", 2)
    with pytest.raises(FlowerChanged, match="backoff defaults"):
        object_pulls.shorten_object_pulls()


def test_a_supernode_runs_patched_at_its_poll_interval_or_as_flowers_own():
    config = {"partition-id": 0, "num-partitions": 1}
    ours = supernode_command(None, superlink="h:9092", node_config=config, poll_interval=0.25)
    flowers = supernode_command(None, superlink="h:9092", node_config=config, poll_interval=None)
    assert ours[1:5] == ["-m", "fedpriv.deployment.supernode", "--poll-interval", "0.25"]
    assert Path(flowers[0]).name == "flower-supernode"
    assert "fedpriv.deployment.supernode" not in flowers


def test_fedpriv_supernode_refuses_a_poll_interval_out_of_range(capsys):
    argv = ["supernode", "keys", "--superlink", "h:9092", "--partition-id", "0"]
    assert cli_main([*argv, "--num-partitions", "1", "--poll-interval", "0"]) == 2
    assert "--poll-interval" in capsys.readouterr().err
