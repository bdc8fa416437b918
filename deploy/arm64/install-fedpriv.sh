#!/usr/bin/env bash
# Install fedpriv into an arm64 root file system as docs/deployment.md step 2 says, run
# inside it with chroot (arm64 binaries through qemu-user-static and binfmt_misc), as a
# `docker buildx --platform linux/arm64` build of deploy/docker/Dockerfile would:
#
#   deploy/arm64/install-fedpriv.sh ROOTFS         # needs root; build.sh calls it
#
# torch first (the CPU build), then deploy/requirements.lock with --require-hashes, then
# fedpriv, a wheel built on this host, with --no-deps, into ROOTFS/opt/fedpriv/.venv.
# deploy/ takes torch 2.13.0 from PyTorch's CPU index (TORCH_INDEX, TORCH_VERSION); where
# that index cannot be reached, PyPI's newest CPU-only aarch64 torch (2.10.0) is used
# instead, and said so: from 2.11 on PyPI's aarch64 torch is the CUDA build.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
rootfs=$(cd "${1:?usage: install-fedpriv.sh ROOTFS}" && pwd)
pip=${PIP:-$repo/.venv/bin/pip}
torch_index=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
torch_cpu_index_version=${TORCH_VERSION:-2.13.0}
torch_pypi_version=2.10.0

rm -rf "$rootfs/opt/fedpriv" "$rootfs/tmp/fedpriv" && mkdir -p "$rootfs/opt/fedpriv" "$rootfs/tmp/fedpriv"
(cd "$repo" && "$pip" wheel -q --no-deps --no-build-isolation . -w "$rootfs/tmp/fedpriv")
cp "$repo/deploy/requirements.lock" "$rootfs/tmp/fedpriv/"
# The host's CA bundle, for hosts that reach PyPI through a TLS-inspecting proxy.
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/tmp/fedpriv/ca.crt"
cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf"
mount -t proc proc "$rootfs/proc"
trap 'umount "$rootfs/proc" 2>/dev/null || true' EXIT
chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        TORCH_INDEX="$torch_index" TORCH_VERSION="$torch_cpu_index_version" \
        TORCH_PYPI_VERSION="$torch_pypi_version" /bin/sh -ec '
        export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore \
               PIP_CERT=/tmp/fedpriv/ca.crt
        python3 -m venv /opt/fedpriv/.venv
        pip=/opt/fedpriv/.venv/bin/pip
        if $pip install -q --retries 1 --timeout 20 --index-url "$TORCH_INDEX" "torch==$TORCH_VERSION" 2>/dev/null; then
            echo "fedpriv-arm64: torch $TORCH_VERSION from $TORCH_INDEX" >&2
        else
            echo "fedpriv-arm64: $TORCH_INDEX cannot be reached: torch $TORCH_PYPI_VERSION," \
                 "the newest CPU-only aarch64 torch on PyPI" >&2
            $pip install -q "torch==$TORCH_PYPI_VERSION"
        fi
        $pip install -q --require-hashes -r /tmp/fedpriv/requirements.lock
        $pip install -q --no-deps /tmp/fedpriv/*.whl
        cd / && FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 /opt/fedpriv/.venv/bin/python -c "
import torch, tenseal, opacus, flwr, fedpriv
assert torch.version.cuda is None, torch.version.cuda
print(\"fedpriv-arm64: torch\", torch.__version__, \"| tenseal\", tenseal.__version__, \"| flwr\", flwr.__version__)"'
rm -rf "$rootfs/tmp/fedpriv" "$rootfs/root/.cache"
