#!/bin/sh
# `make overlay`: the tarballs a template build extracts at `/`, from dist/
# (run `make bundle` first) and rootfs-overlay/.
#
#   dist/envd-overlay.tar.gz         /usr/lib/envd/ (onedir) + /usr/bin/envd -> it;
#                                    glibc >= 2.31 (Debian 11, Ubuntu 20.04 and later)
#   dist/envd-overlay-static.tar.gz  the same layout from dist/envd-static/ (carries its
#                                    glibc); any x86_64 Linux userland (Alpine, no libc)
#
# Both carry the systemd unit, its preset and enablement link, and the OpenRC
# script. Entries are sorted, owned by root and dated SOURCE_DATE_EPOCH, so the
# same dist/ gives the same bytes.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
dist="$repo/dist"
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 1)}

for f in "$dist/envd/envd" "$dist/envd-static/envd"; do
    [ -x "$f" ] || { echo "build-overlay: $f missing: run make bundle first" >&2; exit 1; }
done

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

pack() {  # pack NAME: tar the staged tree in $stage/root into dist/NAME
    tar -C "$stage/root" --sort=name --owner=0 --group=0 --numeric-owner \
        --mtime="@$SOURCE_DATE_EPOCH" -cf - . | gzip -9n >"$dist/$1.tmp"
    mv "$dist/$1.tmp" "$dist/$1"
    echo "build-overlay: dist/$1 ($(du -h "$dist/$1" | cut -f1))"
}

stage_common() {
    rm -rf "$stage/root"
    mkdir -p "$stage/root/usr/bin"
    cp -a "$repo/rootfs-overlay/." "$stage/root/"
}

stage_common
mkdir -p "$stage/root/usr/lib"
cp -a "$dist/envd" "$stage/root/usr/lib/envd"
ln -s /usr/lib/envd/envd "$stage/root/usr/bin/envd"
pack envd-overlay.tar.gz

stage_common
mkdir -p "$stage/root/usr/lib"
cp -a "$dist/envd-static" "$stage/root/usr/lib/envd"
ln -s /usr/lib/envd/envd "$stage/root/usr/bin/envd"
pack envd-overlay-static.tar.gz
