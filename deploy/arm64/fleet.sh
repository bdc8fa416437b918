#!/usr/bin/env bash
# `make fleet-arm64`: one emulated Raspberry Pi (Debian bookworm arm64 under
# qemu-system-aarch64, deploy/arm64/build.sh) joins a SuperLink on this host as a
# SuperNode, over TLS with its registered node key, and trains a DP-SGD + CKKS run.
#
#   deploy/arm64/fleet.sh [OUT]        # OUT: build/arm64 by default; needs root
#
# Settings (environment): ROUNDS (2), FLEET_PORT (29092) and API_PORT (29093) on the
# host, GUEST_CPU (cortex-a76, boot.sh), GUEST_CPUS (2), GUEST_MEMORY_MB (2048),
# NODE_WAIT_S (1800: booting and importing torch under emulation is slow). Everything it
# starts it stops, by PID. It prints the install size, the device's RSS and the seconds
# per round (metrics.jsonl of the run, in OUT/run/outputs). Under emulation these are not
# a Pi's timings.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$repo/build/arm64}
mkdir -p "$out"
out=$(cd "$out" && pwd)
fedpriv=${FEDPRIV:-$repo/.venv/bin/fedpriv}
python=$(dirname "$fedpriv")/python
rounds=${ROUNDS:-2}
fleet_port=${FLEET_PORT:-29092}
api_port=${API_PORT:-29093}
node_wait_s=${NODE_WAIT_S:-1800}
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
log() { echo "fedpriv-arm64: $(date -u +%H:%M:%S) $*" >&2; }

[[ -f $out/rootfs.img ]] || "$repo/deploy/arm64/build.sh" "$out"

run=$out/run
rm -rf "$run" && mkdir -p "$run"
# The key set: the device reaches this host as 10.0.2.2 (QEMU's user-mode network).
"$fedpriv" keys init --out "$run/keys" --nodes 1 --host 10.0.2.2 >/dev/null
# The device's /etc/fedpriv: its bundle and deploy/systemd's settings, owned by its
# fedpriv user (uid 10001), on a disk of its own.
etc=$run/etc-fedpriv
mkdir -p "$etc" && cp -a "$run/keys/device-0" "$etc/keys"
cat > "$etc/supernode.env" <<ENV
FEDPRIV_KEYS=/etc/fedpriv/keys
FEDPRIV_SUPERLINK=10.0.2.2:$fleet_port
FEDPRIV_PARTITION_ID=0
FEDPRIV_NUM_PARTITIONS=1
FEDPRIV_DATA=
ENV
chown -R 10001:10001 "$etc" && chmod 0750 "$etc" && chmod 0640 "$etc/supernode.env"
mkfs.ext4 -q -L fedpriv-etc -d "$etc" "$run/etc-fedpriv.img" 16M

pids=()
stop() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop EXIT

"$fedpriv" superlink "$run/keys/superlink" --host 127.0.0.1 --port "$fleet_port" \
    --api-port "$api_port" > "$run/superlink.log" 2>&1 &
pids+=($!)
log "SuperLink (pid $!) on 127.0.0.1:$api_port, Fleet API on 127.0.0.1:$fleet_port"

boot_start=$SECONDS
"$repo/deploy/arm64/boot.sh" "$out" "$run/etc-fedpriv.img" "${GUEST_CPUS:-2}" \
    "${GUEST_MEMORY_MB:-2048}" > "$run/console.log" 2>&1 < /dev/null &
pids=("$!" "${pids[@]}")
log "qemu-system-aarch64 (pid $!) booting; its console: $run/console.log"

cd "$run"
log "fedpriv run: $rounds rounds, DP-SGD + CKKS, waiting up to $node_wait_s s for the device"
"$fedpriv" run engine=deployment "engine.address=localhost:$api_port" \
    "engine.root_certificates=$run/keys/superlink/ca.crt" \
    data=digits model=logreg num_clients=1 "rounds=$rounds" strategy=fedavg \
    privacy=dp_sgd crypto=ckks "crypto.keys_dir=$run/keys/superlink/" \
    engine.torch_threads=1 "engine.node_wait_s=$node_wait_s" engine.round_timeout_s=3600 \
    hydra.run.dir="$run/outputs" 2>&1 | tee "$run/run.log"
log "run finished $((SECONDS - boot_start)) s after boot began"

stop
trap - EXIT
"$python" "$repo/deploy/arm64/summary.py" "$run/outputs" --rootfs "$out/rootfs" | tee "$run/summary.txt"
