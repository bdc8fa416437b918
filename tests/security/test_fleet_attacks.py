"""An outsider attacks a real fleet (flower-superlink, its nginx Fleet proxy and two
flower-supernode processes on this machine) the way the review did: with the public
``ca.crt`` only, or with a device's public key but not its private key. The outsider
reaches what the network reaches: the Fleet proxy (``fleet.address``). The operator on
the server host uses the SuperLink's loopback API (``fleet.api_address``). One fleet
serves every attack in this module; the proxy listens on 0.0.0.0 as on a server."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.proto.fleet_pb2 import ActivateNodeRequest, PullMessagesRequest
from flwr.proto.node_pb2 import Node
from flwr.supercore.primitives.asymmetric import public_key_to_bytes
from flwr.supernode.fleet_http_client import FleetHttpClient
from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

from fedpriv.deployment import LocalFleet, Supernode, start_superlink, write_fleet_keys
from fedpriv.deployment.enrolment import enrol_exactly
from fedpriv.deployment.processes import (
    FlowerProcess,
    flower_environment,
    flower_script,
    free_port,
    superlink_command,
    wait_for_port,
    write_connection,
)

pytestmark = pytest.mark.deployment

#: An app that is not fedpriv's: its ServerApp writes a file on the server and records
#: what the devices answered; its ClientApp writes a file on the device.
FOREIGN_APP = """
import json
import time
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

client_app = ClientApp()


@client_app.query()
def steal(msg: Message, context: Context) -> Message:
    Path(str(context.run_config["marker"])).write_text(json.dumps(context.node_config))
    return Message(RecordDict(), reply_to=msg)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    Path(str(context.run_config["server-marker"])).write_text("the ServerApp ran")
    nodes = []
    while len(nodes) < int(context.run_config["nodes"]):
        nodes = list(grid.get_node_ids())
        time.sleep(0.5)
    asks = [grid.create_message(RecordDict(), "query", node, "1") for node in nodes]
    replies = grid.send_and_receive(asks, timeout=120)
    answers = [r.error.reason if r.has_error() else "ran" for r in replies]
    Path(str(context.run_config["report"])).write_text(json.dumps(answers))
"""


def write_foreign_app(directory: Path) -> Path:
    directory.mkdir(parents=True)
    pyproject = {
        "build-system": {"requires": ["setuptools>=68"], "build-backend": "setuptools.build_meta"},
        "project": {"name": "foreign-app", "version": "1.0.0", "dependencies": []},
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "outsider",
                    "components": {
                        "serverapp": "foreign:server_app",
                        "clientapp": "foreign:client_app",
                    },
                    "config": {"marker": "", "report": "", "server-marker": "", "nodes": 1},
                }
            }
        },
    }
    (directory / "pyproject.toml").write_text(tomli_w.dumps(pyproject))
    (directory / "foreign.py").write_text(FOREIGN_APP)
    return directory


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    with LocalFleet(tmp_path_factory.mktemp("fleet"), nodes=2, host="0.0.0.0") as running:
        yield running


def flwr(
    args: list[str], *, address: str, ca_cert: Path, home: Path
) -> subprocess.CompletedProcess:
    """The ``flwr`` CLI against ``address``, trusting ``ca_cert``."""
    connection = write_connection(home, address=address, root_certificates=ca_cert)
    return subprocess.run(
        [flower_script("flwr"), *args, connection],
        env=flower_environment({"FLWR_HOME": str(home)}),
        capture_output=True,
        text=True,
        timeout=120,
    )


def outsider_key(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    """A P-384 key of the outsider's own, and its OpenSSH public key file."""
    key = ec.generate_private_key(ec.SECP384R1())
    public = directory / "outsider.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return key, public


def refused(done: subprocess.CompletedProcess) -> bool:
    """Whether a ``flwr`` command failed (``--format json`` exits 0 with success false)."""
    if done.returncode != 0:
        return True
    try:
        return json.loads(done.stdout).get("success") is False
    except json.JSONDecodeError:
        return False


def registered_nodes(fleet: LocalFleet, home: Path) -> list[str]:
    """The node IDs the operator, on the server host, sees registered."""
    done = flwr(
        ["supernode", "list", "--format", "json"],
        address=fleet.api_address,
        ca_cert=fleet.creds.ca_cert,
        home=home,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    nodes = json.loads(done.stdout)["nodes"]
    return sorted(n["node-id"] for n in nodes if n["status"] != "unregistered")


def test_an_outsider_with_ca_crt_cannot_register_a_node(fleet: LocalFleet, tmp_path: Path) -> None:
    before = registered_nodes(fleet, tmp_path / "operator")
    _, public = outsider_key(tmp_path)
    done = flwr(
        ["supernode", "register", str(public)],
        address=fleet.address,
        ca_cert=fleet.creds.ca_cert,
        home=tmp_path / "outsider",
    )
    assert refused(done), done.stdout
    assert registered_nodes(fleet, tmp_path / "operator") == before
    assert len(before) == 2


def test_an_outsider_with_ca_crt_cannot_list_runs(fleet: LocalFleet, tmp_path: Path) -> None:
    done = flwr(
        ["ls", "--format", "json"],
        address=fleet.address,
        ca_cert=fleet.creds.ca_cert,
        home=tmp_path / "outsider",
    )
    assert refused(done), done.stdout
    assert "404" in done.stdout  # answered by the proxy, not by the Control API


def runs(fleet: LocalFleet, home: Path) -> list[dict]:
    """The runs the operator, on the server host, sees."""
    done = flwr(
        ["ls", "--format", "json"],
        address=fleet.api_address,
        ca_cert=fleet.creds.ca_cert,
        home=home,
    )
    return json.loads(done.stdout)["runs"]


def test_an_outsider_with_ca_crt_cannot_submit_an_app(fleet: LocalFleet, tmp_path: Path) -> None:
    before = runs(fleet, tmp_path / "operator")
    app = write_foreign_app(tmp_path / "foreign")
    done = flwr(
        ["run", str(app)],
        address=fleet.address,
        ca_cert=fleet.creds.ca_cert,
        home=tmp_path / "outsider",
    )
    assert refused(done), done.stdout
    assert runs(fleet, tmp_path / "operator") == before


def fleet_client(
    fleet: LocalFleet, signer: ec.EllipticCurvePrivateKey, claimed: ec.EllipticCurvePublicKey
) -> FleetHttpClient:
    """Flower's own Fleet client, claiming ``claimed`` and signing with ``signer``."""
    return FleetHttpClient.from_server_address(
        fleet.address,
        insecure=False,
        root_certificates=str(fleet.creds.ca_cert),
        interceptors=[NodeAuthHttpInterceptor(signer, claimed)],
    )


def test_an_outsider_with_its_own_key_cannot_join_or_pull_a_message(
    fleet: LocalFleet,
) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    with fleet_client(fleet, key, key.public_key()) as client:
        with pytest.raises(httpx.HTTPStatusError):
            client.ActivateNode(
                ActivateNodeRequest(
                    public_key=public_key_to_bytes(key.public_key()), heartbeat_interval=30
                )
            )
        with pytest.raises(httpx.HTTPStatusError) as refused:
            client.PullMessages(PullMessagesRequest(node=Node(node_id=1)))
    assert refused.value.response.status_code == 401


def test_a_devices_public_key_without_its_private_key_pulls_nothing(fleet: LocalFleet) -> None:
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    device = load_ssh_public_key(fleet.creds.node_public_keys()[0].read_bytes())
    assert isinstance(device, ec.EllipticCurvePublicKey)
    attacker = ec.generate_private_key(ec.SECP384R1())
    with fleet_client(fleet, attacker, device) as client:
        for node_id in (1, 2**63):
            with pytest.raises(httpx.HTTPStatusError) as refused:
                client.PullMessages(PullMessagesRequest(node=Node(node_id=node_id)))
            assert refused.value.response.status_code == 401


def listening(pid: int) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections("inet")
        if c.status == psutil.CONN_LISTEN
    }


def test_the_superlinks_own_apis_listen_on_loopback_only(fleet: LocalFleet) -> None:
    """Control and ServerAppIO share the SuperLink's one listener in Flower 1.41:
    every socket flower-superlink listens on is a loopback address; only the proxy
    listens on the public interface."""
    assert fleet.superlink is not None
    assert listening(fleet.superlink.link.pid) == {("127.0.0.1", fleet.api_port)}
    proxy = set().union(
        *(listening(c.pid) for c in psutil.Process(fleet.superlink.proxy.pid).children())
    )
    assert proxy | listening(fleet.superlink.proxy.pid) == {("0.0.0.0", fleet.port)}


def non_loopback_addresses() -> list[str]:
    """This machine's IPv4 addresses other hosts could use (its interfaces, as
    ``hostname -I`` lists them)."""
    return [
        address.address
        for addresses in psutil.net_if_addrs().values()
        for address in addresses
        if address.family == socket.AF_INET and not address.address.startswith("127.")
    ]


def test_from_another_interface_only_the_fleet_proxy_answers(fleet: LocalFleet) -> None:
    """Connect as another host would, to this machine's non-loopback address (skipped
    where the machine has none): the API port refuses, the Fleet port accepts."""
    addresses = non_loopback_addresses()
    if not addresses:
        pytest.skip("no non-loopback IPv4 address on this machine")
    for address in addresses:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, fleet.api_port), timeout=10).close()
        socket.create_connection((address, fleet.port), timeout=10).close()


@pytest.mark.parametrize(
    "path",
    [
        "/v1/control/list-runs",
        "/v1/control/register-node",
        "/v1/control/start-run",
        "/v1/runtime/pull-task-input",
        "/v1/runtime/get-nodes",
        "/v1/fleet/../control/list-runs",
        "/v1/fleet/%2e%2e/control/list-runs",
        "/v1/fleet/..%2fcontrol/list-runs",
        "//v1/control/list-runs",
        "/docs",
        "/openapi.json",
    ],
)
def test_the_proxy_forwards_no_path_but_the_fleet_routes(fleet: LocalFleet, path: str) -> None:
    """Raw requests to Control and ServerAppIO routes, also behind dot segments and
    percent-encoding: nginx answers 404 itself; the SuperLink never sees them."""
    with httpx.Client(verify=str(fleet.creds.ca_cert)) as client:
        response = client.post(
            f"https://{fleet.address}{path}",
            content=b"",
            headers={"content-type": "application/protobuf"},
        )
    assert response.status_code == 404, (path, response.status_code, response.text[:200])
    assert "nginx" in response.text or not response.text


def acquire_task(address: str, ca_cert: Path | None) -> int:
    """A SuperExec's first call, AcquireTask, with Flower's Runtime client and no
    SuperExec secret: the HTTP status it gets."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.runtime.runtime_http_client import RuntimeHttpClient

    client = RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=ca_cert is None,
        root_certificates=None if ca_cert is None else str(ca_cert),
        interceptors=[],
    )
    try:
        client.AcquireTask(AcquireTaskRequest(supported_task_types=list(TaskType)))
    except httpx.HTTPStatusError as error:
        return error.response.status_code
    finally:
        client.close()
    return 200


def test_a_local_process_cannot_take_the_superlinks_or_a_devices_tasks(fleet: LocalFleet) -> None:
    """Another user on the server (or on a device) asks the loopback Runtime API for the
    next ServerApp (ClientApp) task, which would hand over the task's token: refused
    without the SuperExec secret that fedpriv's executor holds."""
    assert acquire_task(fleet.api_address, fleet.creds.ca_cert) in (401, 403)
    for node in fleet.nodes:
        assert acquire_task(f"127.0.0.1:{node.runtime_port}", None) in (401, 403)


def submit_foreign_app(address: str, ca_cert: Path, tmp_path: Path, nodes: int) -> dict[str, Path]:
    """``flwr run`` of the foreign app from the server host, until the run ends; the
    paths its ServerApp and ClientApp would write."""
    app = write_foreign_app(tmp_path / "foreign")
    paths = {name: tmp_path / f"{name}.json" for name in ("marker", "report", "server-marker")}
    config = tmp_path / "run-config.toml"
    config.write_text(tomli_w.dumps({**{k: str(v) for k, v in paths.items()}, "nodes": nodes}))
    done = flwr(
        ["run", str(app), "--stream", "--run-config", str(config)],
        address=address,
        ca_cert=ca_cert,
        home=tmp_path / "operator",
    )
    assert "Successfully started run" in done.stdout, done.stdout + done.stderr
    return paths


def test_the_superlink_runs_no_serverapp_but_fedprivs(fleet: LocalFleet, tmp_path: Path) -> None:
    """Whoever reaches the Control API on the server (a local user) submits an app: its
    ServerApp does not run (it would run as the fleet's user, next to server.key)."""
    paths = submit_foreign_app(fleet.api_address, fleet.creds.ca_cert, tmp_path, nodes=2)
    deadline = time.monotonic() + 120
    while True:
        (run,) = [r for r in runs(fleet, tmp_path / "operator") if r["fab-name"] == "foreign-app"]
        if run["status"].startswith("finished") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert run["status"] == "finished:failed", run
    assert not paths["server-marker"].exists() and not paths["marker"].exists()
    log = (fleet.directory / "logs" / "superlink-executor.log").read_text()
    assert "refused a foreign app" in log


def test_a_supernode_runs_no_app_a_compromised_superlink_hands_it(tmp_path: Path) -> None:
    """A SuperLink that runs any app (plain Flower, no fedpriv guard: a compromised or
    impersonated server) sends a foreign ClientApp to a fedpriv device: the device
    answers with an error and runs none of its code."""
    keys = write_fleet_keys(tmp_path / "keys", nodes=1)
    port = free_port()
    address = f"127.0.0.1:{port}"
    link = FlowerProcess(
        "flower-superlink (no guard)",
        superlink_command(keys.superlink, port=port),
        tmp_path / "logs" / "superlink.log",
    )
    node = None
    try:
        wait_for_port("127.0.0.1", port, timeout=120, process=link)
        enrol_exactly(
            address,
            ca_cert=keys.superlink.ca_cert,
            public_keys=keys.superlink.node_public_keys(),
        )
        node = Supernode(
            keys.device(0),
            superlink=address,
            partition_id=0,
            num_partitions=1,
            runtime_port=free_port(),
            log_dir=tmp_path / "logs",
        )
        paths = submit_foreign_app(address, keys.superlink.ca_cert, tmp_path, nodes=1)
        deadline = time.monotonic() + 300
        while not paths["report"].exists():
            assert time.monotonic() < deadline, "the foreign ServerApp never finished"
            time.sleep(0.5)
    finally:
        if node is not None:
            node.stop()
        link.stop()
    assert paths["server-marker"].exists()  # the compromised server ran it
    (answer,) = json.loads(paths["report"].read_text())
    assert "refused a foreign app" in answer
    assert not paths["marker"].exists()


def activates(address: str, ca_cert: Path, private_key: Path) -> bool:
    """Whether the node key in ``private_key`` may join (Fleet ActivateNode)."""
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    key = load_ssh_private_key(private_key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    client = FleetHttpClient.from_server_address(
        address,
        insecure=False,
        root_certificates=str(ca_cert),
        interceptors=[NodeAuthHttpInterceptor(key, key.public_key())],
    )
    with client:
        try:
            client.ActivateNode(
                ActivateNodeRequest(
                    public_key=public_key_to_bytes(key.public_key()), heartbeat_interval=30
                )
            )
        except httpx.HTTPStatusError:
            return False
    return True


def test_a_restart_leaves_exactly_the_keys_in_nodes_registered(tmp_path: Path) -> None:
    """Someone on the server registers a key by hand and a device's key is deleted from
    ``nodes/``; after a restart on the same database neither key may join."""
    keys = write_fleet_keys(tmp_path / "keys", nodes=2)
    creds = keys.superlink
    port, api_port = free_port(), free_port()
    start = {
        "host": "127.0.0.1",
        "port": port,
        "api_port": api_port,
        "database": str(tmp_path / "state.db"),
        "log_dir": tmp_path / "logs",
    }
    stranger = tmp_path / "stranger"
    stranger.mkdir(mode=0o700)
    key = ec.generate_private_key(ec.SECP384R1())
    (stranger / "stranger.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    (stranger / "stranger.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    superlink = start_superlink(creds, **start)
    try:
        done = flwr(
            ["supernode", "register", str(stranger / "stranger.pub")],
            address=f"127.0.0.1:{api_port}",
            ca_cert=creds.ca_cert,
            home=tmp_path / "operator",
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert activates(f"127.0.0.1:{port}", creds.ca_cert, stranger / "stranger.key")
    finally:
        superlink.stop()
    creds.node_key(1).with_suffix(".pub").unlink()  # device 1 is removed from the fleet

    superlink = start_superlink(creds, **start)
    try:
        address = f"127.0.0.1:{port}"
        assert not activates(address, creds.ca_cert, stranger / "stranger.key")
        assert not activates(address, creds.ca_cert, keys.device(1).node_key(1))
        assert activates(address, creds.ca_cert, keys.device(0).node_key(0))
        done = flwr(
            ["supernode", "list", "--format", "json"],
            address=f"127.0.0.1:{api_port}",
            ca_cert=creds.ca_cert,
            home=tmp_path / "operator",
        )
        nodes = json.loads(done.stdout)["nodes"]
        assert len([n for n in nodes if n["status"] != "unregistered"]) == 1, nodes
    finally:
        superlink.stop()
