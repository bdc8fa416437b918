#!/usr/bin/env bash
# Regenerate deploy/requirements.lock: every runtime dependency of fedpriv pinned with its
# SHA-256 hashes, for every platform a fleet runs (uv's universal resolution: x86_64 and
# aarch64 Linux, Python 3.11+), so that deploy/docker/Dockerfile and the fleet guide
# install the same bytes everywhere with `pip install --require-hashes`. The telemetry
# extras (gpu: NVML, jetson: jtop) are in it too: small, and probed only where present.
#
# torch is left out, with the CUDA libraries that only PyPI's torch wheels pull in: a
# fleet installs torch first from PyTorch's CPU index (or a CUDA index where asked), which
# this resolver cannot see. Usage: deploy/lock.sh [uv]   (run by `make lock`)
set -euo pipefail
cd "$(dirname "$0")/.."
uv=${1:-uv}
compile() {
    "$uv" pip compile pyproject.toml --extra gpu --extra jetson --universal \
        --python-version 3.11 --quiet "$@"
}
# Pass 1: which packages arrive only through torch (PyPI's CUDA libraries): those whose
# every "# via" is torch or another such package.
cuda_only=$(compile --no-header | python3 -c '
import re, sys
via, name = {}, None
for line in sys.stdin:
    if m := re.match(r"([A-Za-z0-9_.-]+)==", line):
        name = m.group(1).lower(); via[name] = set()
    elif name and (m := re.match(r"\s+#\s+(?:via\s+)?([A-Za-z0-9_.-]+)\s*$", line)):
        if m.group(1) != "via": via[name].add(m.group(1).lower())
only = {"torch"}
while True:
    more = {n for n, v in via.items() if v and v <= only and n not in only}
    if not more: break
    only |= more
print("\n".join(sorted(only - {"torch"})))
')
exclude=(--no-emit-package torch)
for name in $cuda_only; do exclude+=(--no-emit-package "$name"); done
# Pass 2: the lock, with hashes.
compile --generate-hashes --custom-compile-command "make lock" "${exclude[@]}" \
    -o deploy/requirements.lock
echo "wrote deploy/requirements.lock ($(grep -c '==' deploy/requirements.lock) packages)"
