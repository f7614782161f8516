#!/usr/bin/env bash
# Quick start: bring up the seed's topology on loopback (deploy/local, installing Redis from
# Debian's packages if missing) and run the proxy in front of it with ./proxy.toml.
# Clients then use 127.0.0.1:6380; the admin server is on 127.0.0.1:8379.
# Extra arguments go to the proxy, e.g. scripts/run-local.sh --listen 127.0.0.1:7000
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
deploy/local/ensure-packages.sh
deploy/local/lab.sh start
exec cargo run --release --locked -- --config proxy.toml "$@"
