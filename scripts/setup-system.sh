#!/bin/sh
# Prepares the machine for the test suite: the `user` account with home
# /home/user that the E2B SDKs assume, plus bash and python3, chromium and
# Node.js (>= 20, for the e2b JS SDK) for tests/test_browser.py, and socat and
# iproute2 for the port-forwarding tests (tests/test_ports.py). Idempotent; as
# a non-root user it only reports what is missing.
set -eu

missing=""
command -v bash >/dev/null 2>&1 || missing="$missing bash"
command -v python3 >/dev/null 2>&1 || missing="$missing python3"
command -v ionice >/dev/null 2>&1 || missing="$missing util-linux"
command -v nice >/dev/null 2>&1 || missing="$missing coreutils"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
command -v socat >/dev/null 2>&1 || missing="$missing socat"
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"

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

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
    echo "setup-system: Node.js >= 20 is needed by the browser test (found major $node_major)" >&2
    exit 1
fi
