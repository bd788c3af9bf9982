#!/bin/sh
# What `make bundle` and `make test-rootfs` need from the machine besides
# setup-system.sh: debootstrap (build chroot, test rootfs) and systemd-nspawn
# (booting the unit file). Idempotent; as a non-root user it only reports.
set -eu

missing=""
command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
command -v systemd-nspawn >/dev/null 2>&1 || missing="$missing systemd-container"
command -v unshare >/dev/null 2>&1 || missing="$missing util-linux"
command -v readelf >/dev/null 2>&1 || missing="$missing binutils"
[ -n "$missing" ] || exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-rootfs-tools: please install:$missing" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
