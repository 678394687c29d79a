# Sourced by the packaging checks (scripts/container.sh, scripts/package.sh): what they share
# when they start an engine from what they built. The caller defines `fail MESSAGE`.

# Sets `mqtt` and `http` to two distinct free loopback ports (the kernel may hand a
# just-released port out again).
free_ports() {
  local one='import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
  mqtt=$(python3 -c "$one"); http=$(python3 -c "$one")
  while [ "$http" = "$mqtt" ]; do http=$(python3 -c "$one"); done
}

# wait_ready BIN HTTP_PORT LOG: waits up to ~30 s for the engine's /readyz to answer 200 (asked
# with BIN's own healthcheck), and fails with the end of LOG if it never does.
wait_ready() {
  local bin=$1 port=$2 log=$3 i
  for i in $(seq 1 100); do
    "$bin" healthcheck --url "http://127.0.0.1:$port/readyz" --timeout 1s 2>/dev/null && return 0
    sleep 0.3
  done
  "$bin" healthcheck --url "http://127.0.0.1:$port/readyz" || fail "not ready: $(tail -5 "$log")"
}
