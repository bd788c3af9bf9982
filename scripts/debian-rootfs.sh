#!/bin/sh
# Prints the path of a pristine minimal Debian root file system tarball,
# making it with debootstrap on first use and caching it outside the repository
# (ENVD_CACHE, default ~/.cache/envd-py) so that later runs on the machine,
# CI's included, skip the download.
#
# Usage: scripts/debian-rootfs.sh [SUITE [PACKAGE,...]]
#   SUITE defaults to bullseye (glibc 2.31); PACKAGES are added to minbase.
set -eu

suite=${1:-bullseye}
include=${2:-}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${ENVD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/envd-py}
tarball="$cache/rootfs-$suite-minbase${include:+-$(echo "$include" | tr , +)}.tar"

if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null 2>&1 || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    mkdir -p "$cache"
    work=$(mktemp -d "$cache/debootstrap.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    debootstrap --variant=minbase ${include:+--include="$include"} "$suite" "$work/root" "$mirror" \
        >"$work/log" 2>&1 || {
        tail -20 "$work/log" >&2
        exit 1
    }
    rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*_dists_*
    tar -C "$work/root" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
fi
echo "$tarball"
