#!/usr/bin/env bash
# run.sh: end-to-end browser test of the admin page (issue 9).
#
# Builds bin/gateway, starts two gateways on loopback — hampshire (auth on,
# peer surrey) and surrey — each with its own data dir in a temp dir, stores
# testdata/studies/study1 at hampshire, then drives Debian's chromium with
# playwright-core through e2e/ui.spec.mjs. Screenshots land in
# e2e/screenshots/ (gitignored). No browser is ever downloaded.
#
#   e2e/run.sh             the real gateway pair
#   e2e/run.sh --fixture   the page against e2e/fixture-server.mjs (made-up data)
#
# Environment: HAMPSHIRE_PORT (18080), SURREY_PORT (18081), E2E_AUTH=0 to run
# hampshire without auth, CHROMIUM (/usr/bin/chromium), FIREFOX
# (/usr/bin/firefox-esr; the Firefox smoke test runs when it is installed,
# FIREFOX=none skips it), KEEP=1 to keep the temp dir and logs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

hport=${HAMPSHIRE_PORT:-18080}
sport=${SURREY_PORT:-18081}
chromium=${CHROMIUM:-/usr/bin/chromium}
[ -x "$chromium" ] || { echo "run.sh: $chromium not found: apt-get install -y chromium" >&2; exit 1; }

if [ ! -d "$here/node_modules/playwright-core" ]; then
	(cd "$here" && npm ci --no-audit --no-fund)
fi

rm -f "$here"/screenshots/*.png # no stale screenshot from an earlier run
tmp=$(mktemp -d "${TMPDIR:-/tmp}/gateway-e2e.XXXXXX")
pids=()
cleanup() {
	local rc=$?
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	if [ "$rc" -ne 0 ]; then
		for f in "$tmp"/*.log; do
			[ -f "$f" ] || continue
			echo "---- last lines of $(basename "$f") ----" >&2
			tail -n 25 "$f" >&2
		done
	fi
	if [ "${KEEP:-0}" = 1 ]; then echo "run.sh: kept $tmp" >&2; else rm -rf "$tmp"; fi
	exit "$rc"
}
trap cleanup EXIT

# firefox_smoke BASE TOKEN: the page in Debian's firefox-esr over WebDriver
# BiDi (firefox-smoke.mjs), after the Chromium test has created a transfer.
firefox_smoke() {
	local ff=${FIREFOX:-/usr/bin/firefox-esr}
	if [ "$ff" = none ] || [ ! -x "$ff" ]; then
		echo "run.sh: firefox-esr not installed: Firefox smoke test skipped (apt-get install -y firefox-esr)"
		return 0
	fi
	local flag=""
	node -e 'process.exit(typeof WebSocket === "undefined" ? 1 : 0)' || flag=--experimental-websocket
	BASE_URL="$1" GATEWAY_TOKEN="$2" FIREFOX="$ff" node $flag "$here/firefox-smoke.mjs"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_healthy() { # url name
	for _ in $(seq 1 100); do
		if curl -fsS -o /dev/null "$1/healthz" 2>/dev/null; then return 0; fi
		sleep 0.2
	done
	echo "run.sh: $2 did not answer $1/healthz within 20 s" >&2
	return 1
}

if [ "${1:-}" = --fixture ]; then
	port=${FIXTURE_PORT:-18090}
	port_free "$port" || { echo "run.sh: port $port is in use" >&2; exit 1; }
	FIXTURE_TOKEN=fixture-token node "$here/fixture-server.mjs" "$port" >"$tmp/fixture.log" 2>&1 &
	pids+=($!)
	wait_healthy "http://127.0.0.1:$port" fixture
	BASE_URL="http://127.0.0.1:$port" GATEWAY_TOKEN=fixture-token FIXTURE=1 CHROMIUM="$chromium" \
		node "$here/ui.spec.mjs"
	firefox_smoke "http://127.0.0.1:$port" fixture-token
	exit 0
fi

echo "run.sh: go build -o bin/gateway ./cmd/gateway"
go build -o bin/gateway ./cmd/gateway

for p in "$hport" "$sport"; do
	port_free "$p" || { echo "run.sh: port $p is in use (set HAMPSHIRE_PORT/SURREY_PORT)" >&2; exit 1; }
done

token=""
auth_yaml=""
if [ "${E2E_AUTH:-1}" != 0 ]; then
	token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
	sha=$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)
	auth_yaml="auth:
  tokens:
    - name: e2e-admin
      sha256: \"$sha\"
      roles: [admin]"
fi
cat >"$tmp/hampshire.yaml" <<YAML
peers:
  - name: surrey
    url: http://127.0.0.1:$sport/dicomweb
$auth_yaml
YAML

bin/gateway serve --listen "127.0.0.1:$sport" --name surrey --data-dir "$tmp/surrey" >"$tmp/surrey.log" 2>&1 &
pids+=($!)
bin/gateway serve --listen "127.0.0.1:$hport" --name hampshire --data-dir "$tmp/hampshire" \
	--config "$tmp/hampshire.yaml" >"$tmp/hampshire.log" 2>&1 &
pids+=($!)
wait_healthy "http://127.0.0.1:$sport" surrey
wait_healthy "http://127.0.0.1:$hport" hampshire

# Store the study with the CLI when it exists; otherwise ui.spec.mjs STOWs
# the same files itself before it opens the page.
if bin/gateway help 2>/dev/null | grep -qE '^\s+gateway store'; then
	store_args=(--url "http://127.0.0.1:$hport/dicomweb")
	if [ -n "$token" ] && bin/gateway store -h 2>&1 | grep -q -- '-token'; then store_args+=(--token "$token"); fi
	echo "run.sh: bin/gateway store ${store_args[0]} ${store_args[1]} testdata/studies/study1"
	GATEWAY_TOKEN="$token" bin/gateway store "${store_args[@]}" testdata/studies/study1 ||
		echo "run.sh: gateway store failed; the browser test will STOW from node" >&2
else
	echo "run.sh: no 'gateway store' command yet; the browser test STOWs from node"
fi

BASE_URL="http://127.0.0.1:$hport" GATEWAY_TOKEN="$token" PEER=surrey CHROMIUM="$chromium" \
	STUDY_DIR="$root/testdata/studies/study1" node "$here/ui.spec.mjs"
firefox_smoke "http://127.0.0.1:$hport" "$token"
