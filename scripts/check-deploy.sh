#!/usr/bin/env bash
# Checks the files of deploy/ as far as this machine allows (CI runs it after clippy):
#   - systemd: `systemd-analyze verify` of the unit and its credentials drop-in;
#   - Prometheus: `promtool check rules` and `promtool test rules` (promtool from Debian's
#     prometheus package, unpacked into target/tools unless already installed);
#   - Kubernetes YAML, the Grafana JSON and the packaged configs parse, and the proxy accepts
#     those configs (`check` exits 0 or 69, never 64 = bad config);
#   - Debian package: built with scripts/build-deb.sh, unpacked with `dpkg -x` into a throwaway
#     root, its contents listed with `dpkg -c` and checked, the unpacked binary run.
# Not here: Docker/Podman and a Kubernetes cluster cannot run on this machine, and hadolint is
# not packaged in Debian; tests/deploy.rs runs the supervisord program for real.
#
# CHECK_DEB_RELEASE=1 packages a release build (what scripts/build-deb.sh ships); by default
# the package is made from the debug binary, which checks the same layout in seconds instead
# of a release build's minutes (see docs/deployment.md for the times measured).
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
root=$PWD
# shellcheck source=../deploy/local/ensure-packages.sh
source deploy/local/ensure-packages.sh

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() {
    echo "check-deploy: FAILED: $*" >&2
    exit 1
}

# Tools: PyYAML for the system python3, systemd-analyze, and promtool.
pkgs=()
/usr/bin/python3 -c 'import yaml' >/dev/null 2>&1 || pkgs+=(python3-yaml)
command -v systemd-analyze >/dev/null 2>&1 || pkgs+=(systemd)
((${#pkgs[@]} == 0)) || ensure_packages "${pkgs[@]}"
py=/usr/bin/python3
# promtool ships in Debian's `prometheus` package (/usr/bin/promtool). Installing that package
# would also install, and where systemd runs start, a Prometheus server: unpack only the
# package's files into target/tools instead (promtool is one static binary).
promtool=$(command -v promtool || true)
if [[ -z $promtool ]]; then
    promtool=$root/target/tools/usr/bin/promtool
    if [[ ! -x $promtool ]]; then
        echo "check-deploy: unpacking promtool from Debian's prometheus package into target/tools" >&2
        sudo=()
        ((EUID == 0)) || sudo=(sudo)
        "${sudo[@]}" apt-get update -qq
        mkdir -p "$tmp/apt"
        (cd "$tmp/apt" && apt-get download -qq prometheus)
        dpkg -x "$tmp"/apt/prometheus_*.deb "$root/target/tools"
    fi
fi

echo "== deploy: no file still names the old admin port 9121"
if grep -rn '9121' deploy/ .dockerignore; then
    fail "the admin port is 8379 now"
fi

echo "== deploy: the proxy binary (debug build, reused by the tests)"
cargo build --locked --quiet --bin redis-failover-proxy
bin=$root/target/debug/redis-failover-proxy

echo "== systemd-analyze verify deploy/systemd/"
# verify needs ExecStart's binary to exist: a copy of the unit runs the one just built, with
# the credentials drop-in beside it as systemctl edit would place it.
units=$tmp/units
mkdir -p "$units/redis-failover-proxy.service.d"
sed "s#^ExecStart=/usr/local/bin/redis-failover-proxy #ExecStart=$bin #" \
    deploy/systemd/redis-failover-proxy.service >"$units/redis-failover-proxy.service"
grep -q "^ExecStart=$bin " "$units/redis-failover-proxy.service" ||
    fail "ExecStart in deploy/systemd/redis-failover-proxy.service changed form"
cp deploy/systemd/credentials.conf "$units/redis-failover-proxy.service.d/"
# It exits 0 on unknown keys and bad values too, only printing them: any output fails.
out=$(SYSTEMD_UNIT_PATH="$units:" systemd-analyze verify --man=no \
    "$units/redis-failover-proxy.service" 2>&1) || fail "systemd-analyze verify: $out"
[[ -z $out ]] || fail "systemd-analyze verify printed: $out"
for key in 'Type=notify' 'ExecReload=/bin/kill -HUP $MAINPID' 'Restart=always' \
    'RestartPreventExitStatus=64' 'WatchdogSec=' 'MemoryMax=' 'DynamicUser=yes'; do
    grep -qF "$key" deploy/systemd/redis-failover-proxy.service || fail "unit lacks $key"
done
grep -q '^LoadCredential=' deploy/systemd/credentials.conf || fail "drop-in lacks LoadCredential="

echo "== promtool check rules / test rules deploy/prometheus/"
"$promtool" check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && "$promtool" test rules alerts_test.yml)

echo "== YAML, JSON and TOML parse; the proxy accepts the shipped configs"
"$py" - "$tmp" <<'EOF'
import json, sys, tomllib, yaml
tmp = sys.argv[1]
docs = [d for d in yaml.safe_load_all(open("deploy/kubernetes/sidecar.yaml")) if d]
kinds = [d["kind"] for d in docs]
assert kinds == ["ConfigMap", "Deployment", "PodMonitor"], kinds
conf = docs[0]["data"]["proxy.toml"]
tomllib.loads(conf)
open(f"{tmp}/k8s-proxy.toml", "w").write(conf)
pod = docs[1]["spec"]["template"]["spec"]
sidecar = pod["initContainers"][0]
assert sidecar["ports"][0]["containerPort"] == 8379
assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
assert "readinessProbe" not in sidecar, "readiness on /readyz is opt-in (see the comment)"
assert sidecar["resources"]["limits"]["memory"]
assert docs[2]["apiVersion"] == "monitoring.coreos.com/v1"
assert docs[2]["spec"]["podMetricsEndpoints"][0]["port"] == "admin"
rules = yaml.safe_load(open("deploy/prometheus/alerts.yml"))
print("alerts:", [r["alert"] for g in rules["groups"] for r in g["rules"]])
dash = json.load(open("deploy/grafana/redis-failover-proxy.json"))
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
assert all(exprs), "a dashboard query is empty"
print(f"dashboard: {len(dash['panels'])} panels, {len(exprs)} queries")
tomllib.load(open("deploy/debian/proxy.toml", "rb"))
EOF
for conf in "$tmp/k8s-proxy.toml" deploy/debian/proxy.toml; do
    # 0: a master was verified; 69: none reachable from here (expected: no such sentinels).
    code=0
    out=$(timeout 60 "$bin" check --config "$conf" 2>&1) || code=$?
    if [[ $code != 0 && $code != 69 ]]; then
        fail "redis-failover-proxy check --config $conf exited $code: $out"
    fi
done

echo "== Debian package"
if ! cargo deb --version >/dev/null 2>&1; then
    echo "cargo-deb missing: scripts/build-deb.sh installs it (cargo install cargo-deb --locked)"
fi
if [[ ${CHECK_DEB_RELEASE:-0} == 1 ]]; then
    scripts/build-deb.sh --fast -o "$tmp/"
else
    echo "(packaging the debug binary: a release build takes minutes on 2 cores;" \
        "CHECK_DEB_RELEASE=1 packages a release build)"
    DEB_BINARY=$bin scripts/build-deb.sh --fast --strip -o "$tmp/"
fi
deb=$(echo "$tmp"/redis-failover-proxy_*.deb)
[[ -f $deb ]] || fail "no .deb in $tmp"
dpkg-deb --info "$deb" >/dev/null
listing=$(dpkg -c "$deb")
for path in \
    ./usr/bin/redis-failover-proxy \
    ./usr/lib/systemd/system/redis-failover-proxy.service \
    ./etc/redis-failover-proxy/proxy.toml \
    ./usr/share/man/man1/redis-failover-proxy.1.gz \
    ./usr/share/bash-completion/completions/redis-failover-proxy \
    ./usr/share/zsh/vendor-completions/_redis-failover-proxy \
    ./usr/share/fish/vendor_completions.d/redis-failover-proxy.fish; do
    grep -q " $path\$" <<<"$listing" || fail "$deb lacks $path"
done
ctl=$tmp/control
dpkg-deb --control "$deb" "$ctl"
grep -qx /etc/redis-failover-proxy/proxy.toml "$ctl/conffiles" ||
    fail "/etc/redis-failover-proxy/proxy.toml is not a conffile"
pkgroot=$tmp/root
dpkg -x "$deb" "$pkgroot"
"$pkgroot/usr/bin/redis-failover-proxy" --version
grep -q '^ExecStart=/usr/bin/redis-failover-proxy ' \
    "$pkgroot/usr/lib/systemd/system/redis-failover-proxy.service" ||
    fail "the packaged unit does not run /usr/bin/redis-failover-proxy"
# The packaged unit verifies too (its ExecStart now exists, inside the throwaway root).
sed "s#^ExecStart=/usr/bin/redis-failover-proxy #ExecStart=$pkgroot/usr/bin/redis-failover-proxy #" \
    "$pkgroot/usr/lib/systemd/system/redis-failover-proxy.service" >"$units/redis-failover-proxy.service"
out=$(SYSTEMD_UNIT_PATH="$units:" systemd-analyze verify --man=no \
    "$units/redis-failover-proxy.service" 2>&1) || fail "packaged unit: $out"
[[ -z $out ]] || fail "systemd-analyze verify of the packaged unit printed: $out"
# The man page renders, and the bash completion is valid bash.
MANPATH=$pkgroot/usr/share/man man -w redis-failover-proxy >/dev/null 2>&1 ||
    zcat "$pkgroot/usr/share/man/man1/redis-failover-proxy.1.gz" | grep -q '^\.TH redis-failover-proxy 1' ||
    fail "the man page is not a man page"
bash -n "$pkgroot/usr/share/bash-completion/completions/redis-failover-proxy"
echo "check-deploy: OK ($(basename "$deb"), $(wc -l <<<"$listing") entries)"
