#!/usr/bin/env bash
# Installs, from Debian's packages, whatever the lab needs and this machine lacks:
# redis-server, redis-sentinel and redis-tools (redis-cli), plus any extra packages named.
#
#   deploy/local/ensure-packages.sh [PACKAGE...]     e.g. ensure-packages.sh haproxy
#   source deploy/local/ensure-packages.sh && ensure_packages [PACKAGE...]
#
# Sourcing defines ensure_packages only: no shell options are changed and nothing exits the
# caller. Installing the Debian packages may also start a system redis-server on :6379 and a
# redis-sentinel on :26379 where systemd runs; the lab uses other ports and ignores them.

ensure_packages() {
    local -a missing=()
    local pkg
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
    command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
    for pkg in "$@"; do
        if command -v dpkg-query >/dev/null 2>&1; then
            # Asking dpkg, not PATH, because a package name need not be a command name.
            [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == "install ok installed" ]] \
                || missing+=("$pkg")
        else
            command -v "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
        fi
    done
    ((${#missing[@]} == 0)) && return 0

    if ! command -v apt-get >/dev/null 2>&1; then
        echo "ensure-packages: missing ${missing[*]} and no apt-get here; install them by hand" >&2
        return 1
    fi
    local -a as_root=()
    if ((EUID != 0)); then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "ensure-packages: missing ${missing[*]}; not root and no sudo to install them" >&2
            return 1
        fi
        as_root=(sudo)
    fi
    echo "ensure-packages: installing ${missing[*]}" >&2
    # The package lists may be absent or stale on a fresh machine, so update every time we
    # actually have something to install (and only then).
    "${as_root[@]}" apt-get update -qq &&
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    ensure_packages "$@"
fi
