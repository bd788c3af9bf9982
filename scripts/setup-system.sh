#!/bin/sh
# Prepares the machine for the test suite: the `user` account with home
# /home/user that the E2B SDKs assume, plus bash and python3. Idempotent; as
# a non-root user it only reports what is missing.
set -eu

missing=""
command -v bash >/dev/null 2>&1 || missing="$missing bash"
command -v python3 >/dev/null 2>&1 || missing="$missing python3"
command -v ionice >/dev/null 2>&1 || missing="$missing util-linux"
command -v nice >/dev/null 2>&1 || missing="$missing coreutils"

if [ "$(id -u)" != 0 ]; then
    [ -z "$missing" ] || echo "setup-system: missing packages:$missing (run as root to install)" >&2
    id user >/dev/null 2>&1 || echo "setup-system: no 'user' account (run as root to create it)" >&2
    exit 0
fi

if [ -n "$missing" ]; then
    if command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
    else
        echo "setup-system: please install:$missing" >&2
        exit 1
    fi
fi

if ! id user >/dev/null 2>&1; then
    useradd --create-home --home-dir /home/user --shell /bin/bash user
fi
mkdir -p /home/user
chown user:user /home/user
