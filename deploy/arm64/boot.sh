#!/usr/bin/env bash
# Boot the emulated Pi of deploy/arm64/build.sh in the foreground, its serial console on
# stdout: Debian bookworm arm64 on qemu-system-aarch64's `virt` board, software emulation
# (TCG). The core is GUEST_CPU: cortex-a76 (the Pi 5's) by default. Not cortex-a72 (the
# Pi 4's, ARMv8.0): PyPI's aarch64 torch 2.10.0 dies there with SIGILL on import
# (docs/deployment.md).
#
#   GUEST_CPU=cortex-a76 deploy/arm64/boot.sh IMAGE_DIR CONFIG_IMG [CPUS] [MEMORY_MB]
#
# IMAGE_DIR holds vmlinuz, initrd.img and rootfs.img (build.sh's output). CONFIG_IMG is
# an ext4 image labelled fedpriv-etc, mounted at /etc/fedpriv in the guest: supernode.env
# (deploy/systemd's settings) and keys/ (the device's bundle of `fedpriv keys init`),
# owned by uid 10001. Both disks are snapshots: nothing the guest writes is kept. The guest's
# user-mode network reaches the host's 127.0.0.1 as 10.0.2.2. Stop it with SIGTERM.
set -euo pipefail
images=${1:?usage: boot.sh IMAGE_DIR CONFIG_IMG [CPUS] [MEMORY_MB]}
config=${2:?usage: boot.sh IMAGE_DIR CONFIG_IMG [CPUS] [MEMORY_MB]}
cpus=${3:-2}
memory=${4:-2048}
for file in "$images/vmlinuz" "$images/initrd.img" "$images/rootfs.img" "$config"; do
    [[ -f $file ]] || { echo "error: $file not found (run deploy/arm64/build.sh)" >&2; exit 2; }
done
exec qemu-system-aarch64 -M virt -cpu "${GUEST_CPU:-cortex-a76}" -smp "$cpus" -m "$memory" \
    -kernel "$images/vmlinuz" -initrd "$images/initrd.img" \
    -append "root=LABEL=fedpriv-root rw console=ttyAMA0 systemd.show_status=auto" \
    -drive "file=$images/rootfs.img,format=raw,if=none,id=root,snapshot=on" \
    -device virtio-blk-device,drive=root \
    -drive "file=$config,format=raw,if=none,id=config,snapshot=on" \
    -device virtio-blk-device,drive=config \
    -netdev user,id=n0 -device virtio-net-device,netdev=n0 \
    -nographic -no-reboot
