"""Fleet credentials, deployment config checks, device data files and selection rules."""

from __future__ import annotations

import re

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fedpriv import load_config
from fedpriv.crypto import PRESETS, write_keys
from fedpriv.crypto.ckks import CkksParams
from fedpriv.deployment.credentials import write_fleet_keys
from fedpriv.deployment.enrolment import node_key_bytes
from fedpriv.deployment.processes import superlink_command
from fedpriv.deployment.proxy import fleet_routes, nginx_config
from fedpriv.errors import ConfigError, DataError
from fedpriv.node import load_node_file
from fedpriv.selection import Planner, ResourceAware, Uniform


def test_credentials_chain_to_the_fleet_ca_and_name_every_host(tmp_path):
    keys = write_fleet_keys(tmp_path, nodes=2, hosts=["pi-server.local", "192.0.2.10"])
    ca = x509.load_pem_x509_certificate((keys.ca / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate(keys.superlink.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", "pi-server.local"}
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1",
        "192.0.2.10",
    }
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for bundle in [keys.superlink, *keys.devices()]:
        assert bundle.ca_cert.read_bytes() == (keys.ca / "ca.crt").read_bytes()


def test_node_keys_are_p384_pairs_flower_can_load(tmp_path):
    keys = write_fleet_keys(tmp_path, nodes=3)
    publics = keys.superlink.node_public_keys()
    assert [p.name for p in publics] == [f"node-{k}.pub" for k in range(3)]
    for k, device in enumerate(keys.devices()):
        private = load_ssh_private_key(device.node_key(k).read_bytes(), None)
        public = load_ssh_public_key(publics[k].read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.curve.name == "secp384r1"
        assert private.public_key().public_numbers() == public.public_numbers()  # type: ignore[union-attr]
        assert node_key_bytes(publics[k])  # what the SuperLink registers


def test_an_older_flat_key_set_is_not_written_over(tmp_path):
    (tmp_path / "ca.crt").write_text("old")
    with pytest.raises(FileExistsError, match="new directory"):
        write_fleet_keys(tmp_path, nodes=1)
    with pytest.raises(ValueError, match="nodes=0"):
        write_fleet_keys(tmp_path / "other", nodes=0)


def test_the_superlink_binds_loopback_and_the_proxy_passes_only_fleet_routes(tmp_path):
    keys = write_fleet_keys(tmp_path, nodes=1)
    command = superlink_command(keys.superlink, port=9093)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    guarded = superlink_command(keys.superlink, port=9093, superexec_secret=tmp_path / "s")
    assert guarded[guarded.index("--isolation") + 1] == "process"  # fedpriv's executor
    assert guarded[guarded.index("--superexec-auth-secret-file") + 1] == str(tmp_path / "s")
    config = nginx_config(
        keys.superlink, host="0.0.0.0", port=9092, upstream_port=9093, run_dir=tmp_path
    )
    forwarded = re.findall(r"location = (\S+) \{", config)
    assert forwarded == fleet_routes() and len(forwarded) >= 10
    assert all(path.startswith("/v1/fleet/") for path in forwarded)
    assert "listen 0.0.0.0:9092 ssl;" in config and "127.0.0.1:9093" in config
    assert "proxy_ssl_verify on;" in config
    assert "listen [::]:9092 ssl;" in nginx_config(
        keys.superlink, host="::", port=9092, upstream_port=9093, run_dir=tmp_path
    )


def test_fedpriv_superlink_says_what_is_missing(tmp_path, monkeypatch, capsys):
    from fedpriv.deployment import proxy
    from fedpriv.deployment.commands import superlink

    assert superlink(str(tmp_path), port=9093, api_port=9093) == 2
    assert "both 9093" in capsys.readouterr().err
    assert superlink(str(tmp_path)) == 2
    assert "lacks ca.crt, server.pem, server.key" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(proxy, "NGINX_PATHS", ())
    with pytest.raises(FileNotFoundError, match="apt-get install nginx-light"):
        proxy.nginx_binary()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["family=swarm"], "set engine.keys_dir=<keys>/superlink"),
        (["family=vertical", "crypto=ckks", "strategy.merge=sum"], "set crypto.keys_dir"),
        (["crypto=ckks"], "set crypto.keys_dir"),
        (["selection.device_profiles=heterogeneous"], "device_profiles=none"),
        (["engine.address=server"], "must be host:port"),
        (["engine.root_certificates=null"], "unless insecure=true"),
    ],
)
def test_what_a_fleet_cannot_run_is_refused_before_submitting(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(["engine=deployment", *overrides])


def test_provisioned_keys_must_match_the_runs_parameters(tmp_path):
    preset = PRESETS["ckks-128"]
    write_keys(
        tmp_path,
        CkksParams(preset.poly_modulus_degree, preset.coeff_mod_bit_sizes, preset.scale_bits),
    )
    ckks = load_config(["crypto=ckks", f"crypto.keys_dir={tmp_path}"]).crypto
    assert ckks.load_keys(server=True) == (tmp_path / "server.ctx").read_bytes()
    assert ckks.load_keys(server=False) == (tmp_path / "client.ctx").read_bytes()
    other = load_config(["crypto=ckks", "crypto.preset=ckks-128-n8192"]).crypto
    with pytest.raises(ConfigError, match="were made for"):
        other.load_keys(server=True, directory=str(tmp_path))


def test_a_device_file_is_checked_against_the_runs_data(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.ones((5, 1, 8, 8), np.float64), y=np.array([0, 1, 2, 3, 9]))
    x, y = load_node_file(str(good), (1, 8, 8), 10)
    assert x.dtype == np.float32 and y.dtype == np.int64 and len(y) == 5
    np.savez(tmp_path / "shape.npz", x=np.ones((5, 64)), y=np.zeros(5, int))
    with pytest.raises(DataError, match=r"expected \(n, 1, 8, 8\)"):
        load_node_file(str(tmp_path / "shape.npz"), (1, 8, 8), 10)
    np.savez(tmp_path / "labels.npz", x=np.ones((2, 1, 8, 8)), y=np.array([0, 10]))
    with pytest.raises(DataError, match=r"\[0, 10\)"):
        load_node_file(str(tmp_path / "labels.npz"), (1, 8, 8), 10)
    with pytest.raises(DataError, match="cannot read"):
        load_node_file(str(tmp_path / "missing.npz"), (1, 8, 8), 10)


def test_heterogeneous_profiles_spread_geometrically_from_one_to_the_spread():
    spec = Uniform(device_profiles="heterogeneous", speed_spread=8.0)
    assert [spec.speed_factor(k, 4) for k in range(4)] == pytest.approx([1, 2, 4, 8])
    assert spec.simulated_wait(3, 4, train_seconds=0.5) == pytest.approx(3.5)
    assert Uniform().speed_factor(3, 4) == 1.0


def test_resource_aware_fits_steps_to_the_deadline_at_the_measured_speed():
    spec = ResourceAware(round_deadline_s=10.0, headroom=0.5, probe_steps=4)
    planner = spec.planner()
    planner.seconds_per_step = {1: 0.01, 2: 0.5, 3: 10.0}
    assert [planner.steps_for(node) for node in (1, 2, 3)] == [500, 10, 0]
    assert planner.steps_for(99) == 4  # not measured yet: a probe
    assert ResourceAware(round_deadline_s=None).problems()[0][0] == "round_deadline_s"
    assert isinstance(Uniform().planner(), Planner)
