"""A fleet across an emulated network: the SuperLink and three SuperNodes each on a host
of their own (network namespaces behind a router), every device's link with 100 ms of
latency each way, 1 % loss each way and a 10 Mbit/s limit (netem where the kernel has
it, its substitutes where not: docs/deployment.md, "Testing over a real network").

Needs root and iproute2, and iptables where the kernel has no netem (`make test`
installs both); skips, saying why, where they are missing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fedpriv.crypto import PRESETS
from fedpriv.crypto.ckks import CkksParams
from fedpriv.deployment.impairment import Impairment
from fedpriv.deployment.network import Network, network_problem
from fedpriv.deployment.network_fleet import NetworkFleet
from fedpriv.results import Result, read_metrics

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

#: Small and quick: logistic regression on digits, one torch thread per device.
BASE = [
    "data=digits",
    "model=logreg",
    "num_clients=3",
    "engine.torch_threads=1",
    "engine.node_wait_s=120",
]
#: The safety net: no run here may take longer than this, whatever it waits for.
RUN_LIMIT_S = 400


@pytest.fixture(scope="module", autouse=True)
def network_namespaces() -> None:
    if problem := network_problem():
        pytest.skip(problem)


def finish(run: subprocess.Popen[str]) -> str:
    """The run's output once it exited; a failure (and the run killed) if it hangs."""
    try:
        output, _ = run.communicate(timeout=RUN_LIMIT_S)
    except subprocess.TimeoutExpired:
        run.kill()
        output, _ = run.communicate()
        pytest.fail(f"the run did not end within {RUN_LIMIT_S} s:\n{output[-3000:]}")
    return output


def wait_for(out: Path, run: subprocess.Popen[str], done: Callable[[list[dict]], bool]) -> None:
    """Block until the rounds written so far satisfy ``done``."""
    deadline = time.monotonic() + RUN_LIMIT_S
    while not done(read_metrics(out / "metrics.jsonl")):
        assert run.poll() is None, finish(run)
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.2)


def partitions(record: dict) -> list[int]:
    return sorted(int(c["partition-id"]) for c in record["clients"])


#: Runs on the server host: a TCP echo (7000), a TCP sink that answers "k" at the end
#: of its input (7001) and a UDP echo (7002).
ECHO = """
import socket, sys, threading
host = sys.argv[1]
def serve(port, handle):
    listener = socket.create_server((host, port))
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=handle, args=(connection,), daemon=True).start()
def echo(c):
    while data := c.recv(65536):
        c.sendall(data)
def sink(c):
    while c.recv(1 << 20):
        pass
    c.sendall(b"k")
threading.Thread(target=serve, args=(7000, echo), daemon=True).start()
threading.Thread(target=serve, args=(7001, sink), daemon=True).start()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((host, 7002))
while True:
    data, peer = udp.recvfrom(2048)
    udp.sendto(data, peer)
"""

#: Runs on a device host: five TCP round trips, 1000 UDP datagrams echoed (how many
#: came back), and 2 MB sent over TCP (how long until the sink had all of it).
PROBE = """
import json, socket, sys, time
host, bulk = sys.argv[1], 2_000_000
c = socket.create_connection((host, 7000), timeout=60)
trips = []
for _ in range(5):
    t = time.monotonic(); c.sendall(b"x"); c.recv(1); trips.append(time.monotonic() - t)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect((host, 7002)); u.setblocking(False)
back = set()
def drain():
    while True:
        try: back.add(int(u.recv(64)))
        except BlockingIOError: return
for k in range(1000):
    u.send(str(k).encode()); drain(); time.sleep(0.002)
end = time.monotonic() + 2
while time.monotonic() < end:
    drain(); time.sleep(0.01)
s = socket.create_connection((host, 7001), timeout=60)
t = time.monotonic(); s.sendall(b"y" * bulk); s.shutdown(socket.SHUT_WR); s.recv(1)
print(json.dumps({"round_trips": trips, "lost": 1000 - len(back),
                  "transfer_s": time.monotonic() - t, "transfer_bytes": bulk}))
"""


def probe_link(network: Network, host: str, server: str) -> dict:
    """What PROBE measures from ``host`` to ECHO on ``server``."""
    address = network.hosts[server].address
    echo = subprocess.Popen(network.command(server, [sys.executable, "-c", ECHO, address]))
    try:
        for port in (7000, 7001):
            network.wait_listening(server, port, timeout=30, alive=lambda: echo.poll() is None)
        done = subprocess.run(
            network.command(host, [sys.executable, "-c", PROBE, address]),
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        echo.kill()
        echo.wait()
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_the_links_delay_drop_and_limit_what_they_carry(tmp_path: Path) -> None:
    """Each impairment, checked by what it must do to traffic: no reply comes back
    sooner than two delays and no transfer ends sooner than its size over the rate
    (lower bounds: a busy machine only adds to them), and about the configured share of
    datagrams is lost."""
    slow = Impairment(delay_ms=100, loss_percent=0, rate_mbit=10)
    lossy = Impairment(delay_ms=0, loss_percent=20, rate_mbit=100)
    with Network(tmp_path) as network:
        network.add_host("server")
        network.add_host("slow", slow)
        network.add_host("lossy", lossy)
        far = probe_link(network, "slow", "server")
        near = probe_link(network, "lossy", "server")
    assert min(far["round_trips"]) >= 2 * slow.delay_ms / 1000
    assert far["transfer_s"] >= far["transfer_bytes"] * 8 / (slow.rate_mbit * 1e6)
    assert far["lost"] == 0
    # Each datagram crosses the lossy link twice (there and echoed back): 36 % expected
    # lost, binomial s.d. 1.5 %; the bounds are ten s.d. away.
    assert 0.2 < near["lost"] / 1000 < 0.52


def test_a_network_that_fails_leaves_no_namespace_or_process_behind(tmp_path: Path) -> None:
    network = Network(tmp_path)
    with pytest.raises(ValueError, match="host 'device' exists already"), network:
        network.add_host("device", Impairment())
        sleeper = subprocess.Popen(network.command("device", ["sleep", "600"]))
        network.add_host("device")
    assert sleeper.wait(timeout=30) != 0  # killed by PID when the network closed
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert network.prefix not in listed


def test_dp_fedavg_under_ckks_finishes_over_impaired_links(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with NetworkFleet(tmp_path, nodes=3, ckks=ckks_params()) as fleet:
        assert fleet.keys is not None
        run = fleet.run(
            [
                *BASE,
                "strategy=fedavg",
                "privacy=dp_sgd",
                "crypto=ckks",
                f"crypto.keys_dir={fleet.keys.superlink.directory}",
                "rounds=2",
                f"hydra.run.dir={out}",
            ]
        )
        output = finish(run)
        assert run.returncode == 0, output
        mechanism = fleet.network.mechanism
    result = Result.load(out)
    assert result.summary["rounds"] == 2 and result.summary["stop_reason"] is None
    assert result.summary["crypto"]["scheme"] == "ckks"
    assert result.summary["privacy"]["epsilon_max"] > 0
    assert "ε" in output
    for record in result.history:
        assert sorted(c["partition-id"] for c in record["clients"]) == [0, 1, 2]
        assert record["accuracy"] is not None  # evaluated by a key holder
    assert mechanism  # netem, or its substitutes (each link impaired)


def test_a_device_whose_link_drops_for_30_s_is_left_out_then_rejoins(tmp_path: Path) -> None:
    """Device 2's link goes down as a round starts and stays down for 30 s, longer than
    the round may wait (25 s), so no reply of its can count in that round, however fast
    or slow the machine; it must answer a round after its link is back."""
    out = tmp_path / "run"
    with NetworkFleet(tmp_path, nodes=3) as fleet:
        run = fleet.run(
            [
                *BASE,
                "strategy=fedavg",
                "rounds=6",
                "engine.round_timeout_s=25",
                "max_idle_rounds=0",  # a busy machine may time every device out once
                f"hydra.run.dir={out}",
            ]
        )
        wait_for(out, run, lambda rounds: any(2 in partitions(r) for r in rounds))
        fleet.set_link(2, up=False)
        dropped = len(read_metrics(out / "metrics.jsonl"))
        restore = threading.Timer(30, fleet.set_link, args=(2,), kwargs={"up": True})
        restore.start()
        try:
            output = finish(run)
        finally:
            restore.cancel()
        assert run.returncode == 0, output
        server_log = (tmp_path / "logs" / "server.log").read_text(errors="replace")
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    node = next(c["node_id"] for r in history for c in r["clients"] if c["partition-id"] == 2)
    # The round under way when the link went down is left out, with the reason logged.
    assert 2 not in partitions(history[dropped])
    assert re.search(rf"round {dropped + 1}: no reply in time from nodes \[[^]]*{node}", server_log)
    assert any(2 in partitions(r) for r in history[dropped + 1 :]), [partitions(r) for r in history]


def test_a_superlink_cut_off_from_every_device_ends_the_run_with_a_reason(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    with NetworkFleet(tmp_path, nodes=3) as fleet:
        run = fleet.run(
            [
                *BASE,
                "strategy=fedavg",
                "rounds=20",
                "engine.round_timeout_s=10",
                "max_idle_rounds=2",
                f"hydra.run.dir={out}",
            ]
        )
        wait_for(out, run, lambda rounds: len(rounds) >= 1)
        fleet.partition()
        output = finish(run)
    assert run.returncode != 0, output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert "no client's update was accepted in 2 rounds in a row" in summary["stop_reason"]
    assert summary["stop_reason"] in output
    assert summary["rounds"] < 20


def ckks_params() -> CkksParams:
    preset = PRESETS["ckks-128"]
    return CkksParams(preset.poly_modulus_degree, preset.coeff_mod_bit_sizes, preset.scale_bits)


def finishes_over_impaired_links(
    tmp_path: Path, overrides: list[str], *, keys: str, ckks: CkksParams | None = None
) -> Result:
    """A run of ``overrides`` on the network fleet, the server's bundle given as the
    Hydra key ``keys``; its result, which must have completed."""
    out = tmp_path / "run"
    with NetworkFleet(tmp_path, nodes=3, ckks=ckks) as fleet:
        assert fleet.keys is not None
        bundle = fleet.keys.superlink.directory
        run = fleet.run([*overrides, f"{keys}={bundle}", f"hydra.run.dir={out}"])
        output = finish(run)
        assert run.returncode == 0, output
    result = Result.load(out)
    assert result.summary["status"] == "completed", result.summary["stop_reason"]
    return result


def test_a_vertical_run_with_psi_and_a_ckks_sum_finishes_over_impaired_links(
    tmp_path: Path,
) -> None:
    overrides = [
        "family=vertical",
        "vertical.parties=3",
        "num_clients=3",
        "vertical.overlap=0.8",
        "strategy.merge=sum",
        "crypto=ckks",
        "data=digits",
        "train.batch_size=2048",
        "rounds=1",
        "engine.torch_threads=1",
        "engine.node_wait_s=120",
    ]
    result = finishes_over_impaired_links(
        tmp_path, overrides, keys="crypto.keys_dir", ckks=ckks_params()
    )
    (record,) = result.history
    assert sorted(c["party"] for c in record["clients"]) == [0, 1, 2]
    assert json.loads((tmp_path / "run" / "alignment.json").read_text())["method"] == "psi-ed25519"


def test_a_swarm_run_with_gossip_and_consensus_finishes_over_impaired_links(
    tmp_path: Path,
) -> None:
    overrides = [*BASE, "family=swarm", "strategy=gossip", "swarm.consensus=true", "rounds=2"]
    result = finishes_over_impaired_links(tmp_path, overrides, keys="engine.keys_dir")
    assert len(result.history) == 2
