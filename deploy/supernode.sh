#!/usr/bin/env bash
# Start a fedpriv SuperNode (flower-supernode plus fedpriv's warm worker) in the foreground.
#
#   deploy/supernode.sh KEYS_DIR --superlink HOST:9093 --partition-id K --num-partitions N \
#       [--data /data/partK.npz] [--insecure]
#
# KEYS_DIR on a device holds only ca.crt, nodes/node-K.key and (for crypto=ckks) client.ctx.
# Uses $FEDPRIV_VENV/bin/fedpriv when FEDPRIV_VENV is set, else `fedpriv` on PATH.
# See docs/deployment.md.
set -euo pipefail

usage="usage: $(basename "$0") KEYS_DIR --superlink HOST:PORT --partition-id K --num-partitions N [options...]"
if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "$usage" >&2
    exit 2
fi
keys_dir=$1
shift
if [[ ! -d "$keys_dir" ]]; then
    echo "error: keys directory '$keys_dir' does not exist; copy this device's ca.crt," \
         "nodes/node-K.key and client.ctx there from the server (docs/deployment.md)" >&2
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
exec "$fedpriv" supernode "$keys_dir" "$@"
