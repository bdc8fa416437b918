"""The Fleet proxy: nginx in front of the SuperLink, passing on the Fleet API only.

Flower 1.41 serves its Fleet, Control and ServerAppIO (Runtime) APIs on one HTTP
listener, with no option to bind them apart and no authentication on Control in the
open-source build: whoever reaches the port can register a node key, list runs and
submit an app whose ServerApp runs on the server. So fedpriv binds flower-superlink to
127.0.0.1 and puts Debian's nginx on the public interface. nginx terminates TLS with
the server certificate and forwards exactly the Fleet routes of Flower's own router
(one exact-match location each, rewritten to that path, POST only) to the SuperLink
over TLS checked against the fleet CA; every other path gets 404 from nginx. Each
forwarded request is then checked by Flower's SuperNode authentication, which accepts
only the signatures of registered node keys.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from fedpriv.deployment.credentials import Credentials
from fedpriv.deployment.processes import FlowerProcess, wait_for_port

#: The largest request a device sends: Flower chunks arrays at 5 MiB per object.
MAX_BODY = "64m"
#: A push or pull on a slow device link may stall this long between two reads.
IO_TIMEOUT = "300s"
#: Where Debian puts nginx, for a PATH without sbin (a service account's).
NGINX_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx")


def fleet_routes() -> list[str]:
    """The paths of Flower's Fleet router: all a SuperNode ever calls."""
    from flwr.superlink.routers.fleet.router import router

    paths = sorted({route.path for route in router.routes})  # type: ignore[attr-defined]
    if not paths or not all(path.startswith("/v1/fleet/") for path in paths):
        raise RuntimeError(f"Flower's Fleet routes are not what fedpriv expects: {paths}")
    return paths


def nginx_binary() -> str:
    """Debian's nginx (package nginx-light or nginx); a clear error if it is missing."""
    found = shutil.which("nginx") or next((p for p in NGINX_PATHS if Path(p).is_file()), None)
    if found is None:
        raise FileNotFoundError(
            "nginx not found: `fedpriv superlink` puts nginx in front of the SuperLink so "
            "that only the Fleet API faces the network; install it "
            "(Debian, Raspberry Pi OS: `sudo apt-get install nginx-light`)"
        )
    return found


def nginx_config(
    creds: Credentials | None, *, host: str, port: int, upstream_port: int, run_dir: Path
) -> str:
    """nginx.conf for a proxy listening on ``host:port`` (no TLS when ``creds`` is None)."""
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    scheme = "http" if creds is None else "https"
    tls = (
        ""
        if creds is None
        else f"""
        ssl_certificate {creds.server_cert.resolve()};
        ssl_certificate_key {creds.server_key.resolve()};
        ssl_protocols TLSv1.2 TLSv1.3;
        proxy_ssl_verify on;
        proxy_ssl_trusted_certificate {creds.ca_cert.resolve()};
        proxy_ssl_name localhost;
        proxy_ssl_server_name on;
        proxy_ssl_session_reuse on;"""
    )
    locations = "\n".join(
        f"        location = {path} {{\n"
        "            limit_except POST { deny all; }\n"
        f"            proxy_pass {scheme}://fedpriv_superlink{path};\n"
        "        }"
        for path in fleet_routes()
    )
    temp = "\n".join(
        f"    {kind}_temp_path {run_dir / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""# Written by fedpriv (fedpriv/deployment/proxy.py); replaced at every start.
worker_processes 1;
daemon off;
pid {run_dir / "nginx.pid"};
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    server_tokens off;
{temp}
    upstream fedpriv_superlink {{
        server 127.0.0.1:{upstream_port};
        keepalive 16;
    }}
    server {{
        listen {listen}{" ssl" if creds else ""};{tls}
        client_max_body_size {MAX_BODY};
        client_body_timeout {IO_TIMEOUT};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_read_timeout {IO_TIMEOUT};
        proxy_send_timeout {IO_TIMEOUT};
{locations}
        location / {{ return 404; }}
    }}
}}
"""


def start_fleet_proxy(
    creds: Credentials | None,
    *,
    host: str,
    port: int,
    upstream_port: int,
    log_path: Path | None = None,
) -> FlowerProcess:
    """Start nginx for the Fleet API on ``host:port`` and wait until it listens."""
    binary = nginx_binary()
    run_dir = Path(tempfile.mkdtemp(prefix="fedpriv-fleet-proxy-"))
    os.chmod(run_dir, 0o711)  # nginx workers (another user when started as root) enter it
    config = run_dir / "nginx.conf"
    config.write_text(
        nginx_config(creds, host=host, port=port, upstream_port=upstream_port, run_dir=run_dir)
    )
    command = [binary, "-p", str(run_dir), "-e", "stderr", "-c", str(config)]
    proxy = FlowerProcess("nginx (Fleet proxy)", command, log_path, cleanup=run_dir)
    try:
        wait_for_port(_local(host), port, timeout=30, process=proxy)
    except BaseException:
        proxy.stop()
        raise
    return proxy


def _local(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
