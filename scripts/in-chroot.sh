#!/bin/sh
# Runs a shell command inside a root file system, in a private mount namespace
# (so /proc and /dev mounts vanish with it and never leak onto the host).
#
# Usage: scripts/in-chroot.sh ROOT COMMAND   (COMMAND is run by /bin/sh -c)
set -eu
root=$1
shift
exec unshare --mount --propagation private --fork sh -eu -c '
    root=$1; shift
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs tmpfs "$root/tmp"
    exec chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        PIP_CERT=/etc/envd-build-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
        PIP_DEFAULT_TIMEOUT=180 SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-}" \
        /bin/sh -eu -c "$1"
' sh "$root" "$@"
