# free_port prints a loopback TCP port in 20000-29999 that nothing listens
# on, nor on port+10000 (a Redis Cluster node's bus port). Sourced by
# testenv.sh and capacity.sh.
free_port() {
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 10000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && ! (exec 3<>"/dev/tcp/127.0.0.1/$((p + 10000))") 2>/dev/null; then
      echo "$p"; return 0
    fi
  done
  return 1
}
