#!/bin/sh
# What `make image` needs: Debian's podman with runc (crun refuses hybrid
# cgroup hierarchies such as this machine's), netavark and iptables for the
# published port. Idempotent; as a non-root user it only reports.
set -eu

missing=""
command -v podman >/dev/null 2>&1 || missing="$missing podman"
command -v runc >/dev/null 2>&1 || missing="$missing runc"
[ -x /usr/lib/podman/netavark ] || command -v netavark >/dev/null 2>&1 || missing="$missing netavark"
command -v iptables >/dev/null 2>&1 || missing="$missing iptables"
[ -n "$missing" ] || exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-podman: please install:$missing" >&2
    exit 1
fi
apt-get update -qq
# No recommends: they would pull crun's alternatives, buildah and rootless helpers.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
