#!/usr/bin/env bash
# Run a fedpriv command from the right environment: $FEDPRIV_VENV/bin/fedpriv when
# FEDPRIV_VENV is set, else `fedpriv` on PATH; runtime dependency installation off.
# superlink.sh and supernode.sh call it; see docs/deployment.md.
set -euo pipefail

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
exec "$fedpriv" "$@"
