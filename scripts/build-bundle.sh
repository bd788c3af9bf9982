#!/bin/sh
# `make bundle`: freezes envd into dist/ with no Python needed on the target.
#
# The freeze runs inside a Debian 11 (bullseye, glibc 2.31) chroot with a
# CPython 3.11 built there from Debian's source package, so every ELF in the
# bundle links against glibc <= 2.31 whatever the build host has. The chroot
# (with its Python) is cached in ENVD_CACHE (default ~/.cache/envd-py); the
# first build takes a few minutes, later ones well under a minute.
#
# Output:
#   dist/envd/          PyInstaller onedir (the daemon is dist/envd/envd)
#   dist/envd-static/   the same onedir carrying the chroot's glibc (its own
#                       dynamic loader and libc): for Alpine, unknown userlands
#                       or none; installed at /usr/lib/envd by the static overlay
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${ENVD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/envd-py}
suite=bullseye
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Bump when the provisioning below changes, so cached chroots are rebuilt.
chroot_version=1
root="$cache/build-$suite"
ready="$root/.envd-build-chroot-v$chroot_version"
# Reproducible archives and pyc timestamps: the time of the last commit.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 1)}
export SOURCE_DATE_EPOCH

if [ ! -e "$ready" ]; then
    echo "build-bundle: provisioning the $suite build chroot in $root (once per machine)"
    rm -rf "$root"
    mkdir -p "$root"
    tar -C "$root" -xf "$("$repo/scripts/debian-rootfs.sh" "$suite")"
    "$repo/scripts/in-chroot.sh" "$root" "
        echo 'deb $mirror $suite main' > /etc/apt/sources.list
        echo 'deb-src $mirror bookworm main' > /etc/apt/sources.list.d/python-source.list
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            build-essential libssl-dev libffi-dev zlib1g-dev libbz2-dev liblzma-dev \
            uuid-dev binutils xz-utils >/dev/null
        cd /tmp
        apt-get source -qq --download-only python3.11 >/dev/null
        tar -xf python3.11_*.orig.tar.*
        cd Python-3.11.*/
        # No RUNPATH in the interpreter: it would hide the static variant's RPATH
        # from the lookups of libpython's own dependencies.
        ./configure -q --prefix=/opt/python --enable-shared >/dev/null
        make -s -j\$(nproc) >/dev/null 2>&1
        make -s altinstall >/dev/null 2>&1
        echo /opt/python/lib > /etc/ld.so.conf.d/python.conf
        ldconfig
        /opt/python/bin/python3.11 -c 'import ssl, ctypes, lzma, bz2, zlib, uuid'
    "
    touch "$ready"
fi

# The CA bundle the host's pip trusts, for the chroot's pip.
cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$root/etc/envd-build-ca.crt"
cp /etc/resolv.conf "$root/etc/resolv.conf"

# The repository as git sees it (tracked and untracked-but-not-ignored files).
rm -rf "$root/src" "$root/out"
mkdir -p "$root/src" "$root/out"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard \
    | xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh \
    | tar --null -T - -cf -) | tar -C "$root/src" -xf -

"$repo/scripts/in-chroot.sh" "$root" '
    rm -rf /opt/freeze
    /opt/python/bin/python3.11 -m venv /opt/freeze
    /opt/freeze/bin/pip install -q -c /src/packaging/constraints.txt "/src[freeze]"
    cd /tmp
    # A fixed hash seed: PyInstaller orders some archives by set iteration.
    PYTHONHASHSEED=0 /opt/freeze/bin/python /src/packaging/freeze.py /out
'

rm -rf "$repo/dist/envd" "$repo/dist/envd-static"
mkdir -p "$repo/dist"
cp -a "$root/out/envd" "$root/out/envd-static" "$repo/dist/"
echo "build-bundle: dist/envd/ and dist/envd-static ($(du -sh "$repo/dist/envd" | cut -f1), $(du -sh "$repo/dist/envd-static" | cut -f1))"
