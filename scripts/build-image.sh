#!/bin/sh
# `make image`: the debug image (packaging/docker/Dockerfile) built with podman,
# from a Debian 12 base imported from a debootstrapped root file system: no
# registry is needed. Users build the same Dockerfile on the public
# debian:bookworm-slim (its default BASE).
#
#   localhost/envd-py:latest   the onedir overlay (what the README builds)
#   localhost/envd-py:static   the same image with the static overlay
#
# Usage: scripts/build-image.sh [podman build options...]
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
base=localhost/envd-py-base:bookworm

for f in "$repo/dist/envd-overlay.tar.gz" "$repo/dist/envd-overlay-static.tar.gz"; do
    [ -s "$f" ] || { echo "build-image: $f missing: run make overlay first" >&2; exit 1; }
done

# The base follows the cached tarball: a new debootstrap gives a new base.
tarball=$("$repo/scripts/debian-rootfs.sh" bookworm)
stamp=$(stat -c %Y "$tarball")
if [ "$(podman image inspect --format '{{index .Labels "envd-py.rootfs"}}' "$base" 2>/dev/null)" != "$stamp" ]; then
    echo "build-image: importing $tarball as $base"
    podman import --quiet --change "LABEL envd-py.rootfs=$stamp" --change 'CMD ["/bin/bash"]' \
        "$tarball" "$base" >/dev/null
fi

# Docker's format keeps the HEALTHCHECK (OCI's has no such field).
for variant in latest static; do
    overlay=envd-overlay.tar.gz
    [ "$variant" = latest ] || overlay=envd-overlay-static.tar.gz
    podman build --quiet --format docker --build-arg "BASE=$base" --build-arg "OVERLAY=$overlay" \
        -f "$repo/packaging/docker/Dockerfile" -t "localhost/envd-py:$variant" "$@" "$repo" >/dev/null
done
# Dangling layers of earlier builds would pile up with every `make image`.
podman image prune --force >/dev/null
echo "build-image: $(podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' localhost/envd-py | tr '\n' ' ')"
