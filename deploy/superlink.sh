#!/usr/bin/env bash
# Start the fedpriv SuperLink (Flower's Fleet, Control and Runtime APIs on one port,
# TLS and registered-SuperNode authentication) in the foreground.
#
#   deploy/superlink.sh KEYS_DIR [--host 0.0.0.0] [--port 9093] [--database state.db] [--insecure]
#
# KEYS_DIR is what `fedpriv keys init` wrote (ca.crt, server.pem, server.key, nodes/*.pub).
# Uses $FEDPRIV_VENV/bin/fedpriv when FEDPRIV_VENV is set, else `fedpriv` on PATH.
# See docs/deployment.md.
set -euo pipefail

usage="usage: $(basename "$0") KEYS_DIR [fedpriv superlink options...]"
if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "$usage" >&2
    exit 2
fi
keys_dir=$1
shift
if [[ ! -d "$keys_dir" ]]; then
    echo "error: keys directory '$keys_dir' does not exist; make one with" \
         "'fedpriv keys init --out $keys_dir --nodes N --host <this host's name>'" >&2
    exit 2
fi

fedpriv=fedpriv
if [[ -n "${FEDPRIV_VENV:-}" ]]; then
    fedpriv="$FEDPRIV_VENV/bin/fedpriv"
    if [[ ! -x "$fedpriv" ]]; then
        echo "error: FEDPRIV_VENV=$FEDPRIV_VENV has no bin/fedpriv; install fedpriv there" \
             "or unset FEDPRIV_VENV to use the fedpriv on PATH" >&2
        exit 2
    fi
elif ! command -v fedpriv >/dev/null 2>&1; then
    echo "error: no 'fedpriv' on PATH; set FEDPRIV_VENV to the virtual environment it is" \
         "installed in (e.g. FEDPRIV_VENV=/opt/fedpriv/.venv)" >&2
    exit 2
fi

# Never let Flower `uv sync` app dependencies at run time: it would replace the pinned CPU torch.
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
exec "$fedpriv" superlink "$keys_dir" "$@"
