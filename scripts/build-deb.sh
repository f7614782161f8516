#!/usr/bin/env bash
# Builds the Debian package: target/debian/redis-failover-proxy_VERSION-1_ARCH.deb, with the
# binary, the systemd unit, /etc/redis-failover-proxy/proxy.toml (a conffile), man pages and
# bash/zsh/fish completions generated from the clap definition (examples/gen-assets.rs).
#
#   scripts/build-deb.sh                 # release build (several minutes on 2 cores), then package
#   scripts/build-deb.sh --fast          # extra arguments go to `cargo deb`
#   sudo dpkg -i target/debian/redis-failover-proxy_*.deb
#
# DEB_BINARY=path/to/redis-failover-proxy packages that binary instead of building one (in
# target/deb-staging, so target/release is never touched); scripts/check-deploy.sh uses it to
# check the package's layout with the debug binary, without a release build.
# Installs cargo-deb (cargo install cargo-deb --locked) if it is missing.
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "build-deb: installing cargo-deb (cargo install cargo-deb --locked)" >&2
    cargo install cargo-deb --locked
fi

assets=target/assets
rm -rf "$assets"
cargo run --locked --quiet --example gen-assets -- "$assets" >/dev/null
# Debian policy: man pages gzipped, reproducibly (-n: no name or time stamp inside).
gzip -9nf "$assets"/*.1
# The unit of deploy/systemd, with the packaged binary's path.
sed 's#^ExecStart=/usr/local/bin/redis-failover-proxy #ExecStart=/usr/bin/redis-failover-proxy #' \
    deploy/systemd/redis-failover-proxy.service >"$assets/redis-failover-proxy.service"
if ! grep -q '^ExecStart=/usr/bin/redis-failover-proxy ' "$assets/redis-failover-proxy.service"; then
    echo "build-deb: ExecStart in deploy/systemd/redis-failover-proxy.service changed form" >&2
    exit 1
fi

if [[ -n ${DEB_BINARY:-} ]]; then
    # cargo-deb reads the binary from <target dir>/release/ (its placeholder path).
    staging=target/deb-staging
    rm -rf "$staging"
    install -D -m 0755 "$DEB_BINARY" "$staging/release/redis-failover-proxy"
    CARGO_TARGET_DIR=$staging cargo deb --locked --no-build "$@"
else
    cargo deb --locked "$@"
fi
