#!/usr/bin/env bash
# Build an emulated Raspberry Pi: a Debian bookworm arm64 system (the base of Raspberry Pi
# OS 64-bit) with fedpriv installed as deploy/ says, as a disk image that
# qemu-system-aarch64 boots (deploy/arm64/boot.sh).
#
#   deploy/arm64/build.sh [OUT]        # OUT: build/arm64 by default; needs root
#
# Steps, each skipped when its output exists (rm -rf OUT to start over):
#   1. OUT/rootfs: debootstrap, second stage run through qemu-user-static (binfmt_misc).
#   2. the system: user fedpriv (uid 10001, as in deploy/docker), DHCP on the virtio NIC,
#      the journal on the serial console, deploy/systemd/fedpriv-supernode.service enabled,
#      its settings and keys read from a second disk mounted at /etc/fedpriv (boot.sh).
#   3. OUT/rootfs/opt/fedpriv/.venv: torch first, then deploy/requirements.lock with
#      --require-hashes, then fedpriv (a wheel built on the host) with --no-deps; run in
#      the chroot under qemu-user: far faster than installing inside the booted VM, and
#      what an image build for a fleet of Pis would do.
#   4. OUT/rootfs.img (ext4, from the tree) and OUT/vmlinuz, OUT/initrd.img.
#
# Apt packages on the host: debootstrap qemu-user-static binfmt-support qemu-system-arm.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$repo/build/arm64}
mkdir -p "$out"
out=$(cd "$out" && pwd)
rootfs=$out/rootfs
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { echo "fedpriv-arm64: $*" >&2; }
[[ $(id -u) == 0 ]] || { echo "error: deploy/arm64/build.sh needs root (debootstrap, chroot)" >&2; exit 2; }
for tool in debootstrap mkfs.ext4; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found; apt-get install debootstrap qemu-user-static binfmt-support e2fsprogs" >&2; exit 2; }
done
if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
    update-binfmts --enable qemu-aarch64 \
        || { echo "error: no binfmt_misc handler for aarch64; apt-get install qemu-user-static binfmt-support" >&2; exit 2; }
fi

# 1. The base system.
if [[ ! -x $rootfs/usr/bin/python3 || -e $rootfs/debootstrap ]]; then
    rm -rf "$rootfs"
    t0=$SECONDS
    debootstrap --arch=arm64 --variant=minbase \
        --include=python3,python3-venv,linux-image-arm64,systemd-sysv,udev,kmod,procps,ca-certificates,iproute2,initramfs-tools \
        bookworm "$rootfs" "$mirror"
    log "debootstrap: $((SECONDS - t0)) s"
fi

# 2. The system's configuration.
echo fedpriv-arm64 > "$rootfs/etc/hostname"
cat > "$rootfs/etc/fstab" <<'FSTAB'
LABEL=fedpriv-root  /             ext4  defaults,noatime  0 1
LABEL=fedpriv-etc   /etc/fedpriv  ext4  defaults,noatime  0 2
FSTAB
mkdir -p "$rootfs/etc/fedpriv"
cat > "$rootfs/etc/systemd/network/20-wired.network" <<'NET'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
NET
mkdir -p "$rootfs/etc/systemd/journald.conf.d"
cat > "$rootfs/etc/systemd/journald.conf.d/console.conf" <<'JOURNAL'
# The host reads the SuperNode's log from the serial console (boot.sh writes it to a file).
[Journal]
ForwardToConsole=yes
TTYPath=/dev/ttyAMA0
MaxLevelConsole=info
JOURNAL
chroot "$rootfs" /bin/sh -ec '
    getent group fedpriv >/dev/null || groupadd --system --gid 10001 fedpriv
    getent passwd fedpriv >/dev/null || useradd --system --uid 10001 --gid fedpriv \
        --home-dir /var/lib/fedpriv --no-create-home --shell /usr/sbin/nologin fedpriv
    systemctl enable systemd-networkd systemd-networkd-wait-online >/dev/null 2>&1'
# The virt board's disks and NIC in the initramfs (remade only if they are missing: that
# takes minutes under qemu-user).
listing=$(chroot "$rootfs" /bin/sh -c 'lsinitramfs /initrd.img')
if ! grep -q 'virtio_mmio.ko' <<<"$listing" || ! grep -q 'virtio_blk.ko' <<<"$listing"; then
    printf '%s\n' virtio_mmio virtio_blk virtio_net ext4 >> "$rootfs/etc/initramfs-tools/modules"
    chroot "$rootfs" update-initramfs -u -k all
fi
install -m 0644 "$repo/deploy/systemd/fedpriv-supernode.service" "$rootfs/etc/systemd/system/"
chroot "$rootfs" systemctl enable fedpriv-supernode >/dev/null 2>&1

# 3. fedpriv, as deploy/README.md installs it (install-fedpriv.sh).
venv=$rootfs/opt/fedpriv/.venv
if [[ ! -x $venv/bin/fedpriv ]]; then
    t0=$SECONDS
    "$repo/deploy/arm64/install-fedpriv.sh" "$rootfs"
    log "fedpriv installed in the chroot (qemu-user): $((SECONDS - t0)) s"
fi
log "rootfs $(du -sm "$rootfs" | cut -f1) MB, of which /opt/fedpriv/.venv $(du -sm "$venv" | cut -f1) MB"

# 4. The disk image and the kernel to boot it with.
cp -L "$rootfs/vmlinuz" "$out/vmlinuz"
cp -L "$rootfs/initrd.img" "$out/initrd.img"
size_mb=$(( $(du -sm "$rootfs" | cut -f1) + 1024 ))
rm -f "$out/rootfs.img"
mkfs.ext4 -q -L fedpriv-root -d "$rootfs" "$out/rootfs.img" "${size_mb}M"
log "image $out/rootfs.img (${size_mb} MB) ready"
