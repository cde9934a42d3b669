#!/usr/bin/env bash
# capacity.sh N: the capacity benchmark at N instance records (default
# 10,000,000) on a 3-master Redis Cluster and on the embedded index, one
# after the other. The cluster is started here without persistence
# (--save "" --appendonly no): the benchmark measures used_memory, which
# persistence does not change, and an AOF rewrite forks each master, which
# at 10 million instances (about 5 GB a master) needs headroom this 24 GiB
# machine does not have beside the data. scripts/testenv.sh's cluster (AOF
# on) serves the same benchmark at smaller N. Needs redis-server and
# ../shared/testdata/corpus (the template header).
set -euo pipefail
N=${1:-10000000}
DIR=$(mktemp -d /tmp/gateway-capacity.XXXXXX)
PORTS=()
cleanup() {
  for p in "${PORTS[@]}"; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT
# shellcheck source=free_port.sh
source "$(dirname "${BASH_SOURCE[0]}")/free_port.sh"
start() { # start PORT [cluster flags…]
  local p=$1; shift
  mkdir -p "$DIR/$p"
  redis-server --port "$p" --bind 127.0.0.1 --dir "$DIR/$p" --save "" --appendonly no \
    --daemonize yes --logfile "$DIR/$p/redis.log" "$@"
  PORTS+=("$p")
  for _ in $(seq 500); do redis-cli -p "$p" ping 2>/dev/null | grep -q PONG && return 0; sleep 0.02; done
  echo "redis on $p did not start" >&2; return 1
}
single=$(free_port); start "$single"
masters=()
for _ in 1 2 3; do
  p=$(free_port); start "$p" --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000
  masters+=("127.0.0.1:$p")
done
redis-cli --cluster create "${masters[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
for _ in $(seq 250); do
  redis-cli -p "${PORTS[1]}" cluster info | grep -q '^cluster_state:ok' && break; sleep 0.1
done
export GATEWAY_TEST_REDIS_URL="redis://127.0.0.1:$single"
export GATEWAY_TEST_REDIS_CLUSTER_URL="redis://${masters[0]}?addr=${masters[1]}&addr=${masters[2]}"
export GATEWAY_BENCH_INSTANCES=$N GATEWAY_BENCH_QUERIES=${GATEWAY_BENCH_QUERIES:-200}
echo "capacity: $N instances on the 3-master cluster ($(date -u +%H:%M:%S))"
go test -run '^$' -bench 'CapacityCluster$' -benchtime 1x -timeout 0 ./storage/redis/
for p in "${PORTS[@]:1}"; do
  redis-cli -p "$p" info memory | grep -E '^(used_memory|used_memory_rss|mem_fragmentation_ratio):' | sed "s/^/  master $p /"
done
cleanup; PORTS=()
echo "capacity: $N instances on the embedded index ($(date -u +%H:%M:%S))"
go test -run '^$' -bench 'Capacity$' -benchtime 1x -timeout 0 ./storage/bolt/
echo "capacity: done ($(date -u +%H:%M:%S))"
