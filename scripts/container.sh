#!/usr/bin/env bash
# Builds rulechain's container image (Containerfile) and smoke-tests it: it starts, /readyz
# answers, a published message runs through a chain, and a stop saves the state in its volume.
#
# A machine where no container runtime can run (podman or docker, `info` answering) gets the
# same checks without one, and is told so: the Containerfile is linted (multi-stage, non-root
# user, volumes, health check, ports, no OpenSSL in the build), its build stage's commands are
# run here into a directory tree laid out as the runtime stage copies it, and the smoke test
# runs the engine from that tree with the image's config.
#
#   scripts/container.sh [BIN]      BIN: a release binary to use instead of building one
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '%s\n' "$*"; }
fail() { say "container check FAILED: $*" >&2; exit 1; }
. scripts/engine-check.sh

lint() {
  local f=Containerfile
  [ "$(grep -c '^FROM ' "$f")" -ge 2 ] || fail "$f: not a multi-stage build"
  grep -q '^FROM .* AS build$' "$f" || fail "$f: no build stage"
  grep -q '^FROM gcr.io/distroless/\|^FROM docker.io/library/debian:.*-slim' "$f" \
    || fail "$f: the runtime is neither distroless nor Debian slim"
  grep -q '^USER 65532' "$f" || fail "$f: does not run as a non-root user"
  grep -q '^VOLUME \["/etc/rulechain", "/var/lib/rulechain"\]' "$f" || fail "$f: volumes"
  grep -q '^HEALTHCHECK .*' "$f" && grep -q 'livez' "$f" || fail "$f: no HEALTHCHECK on /livez"
  grep -q '^EXPOSE 1883 8080' "$f" || fail "$f: ports"
  grep -q -- '--locked' "$f" || fail "$f: the build does not use Cargo.lock"
  if grep -q '^name = "openssl-sys"' Cargo.lock; then fail "OpenSSL in the dependency tree"; fi
  # Every file the stages copy exists.
  for p in deploy/container/rulechain.yaml deploy/package/devices.yaml rules; do
    [ -e "$p" ] || fail "$p (copied by the $f) is missing"
  done
  say "Containerfile: multi-stage, distroless runtime, non-root, volumes, health check, ports, locked, no OpenSSL"
}

# smoke MQTT_PORT HTTP_PORT STATE_DIR STOP...: the engine is starting; check it, then stop it
# with STOP and check its state.
smoke() {
  local mqtt=$1 http=$2 state=$3; shift 3
  wait_ready "$client" "$http" "$work/engine.log"
  "$client" simulate --broker "mqtt://127.0.0.1:$mqtt" --devices 2 --rate 5 --count 10 \
    > "$work/simulate.log" 2>&1 || fail "the simulator could not publish: $(tail -3 "$work/simulate.log")"
  local seen=""
  for i in $(seq 1 50); do
    seen=$(python3 -c '
import json, sys, urllib.request
chains = json.load(urllib.request.urlopen(sys.argv[1], timeout=2))["chains"]
print(sum(c.get("messages", 0) for c in chains if c["name"] == "store-telemetry"))' \
      "http://127.0.0.1:$http/api/chains" 2>/dev/null || true)
    [ -n "$seen" ] && [ "$seen" -gt 0 ] && break
    sleep 0.2
  done
  [ -n "$seen" ] && [ "$seen" -gt 0 ] || fail "no published message reached the store-telemetry chain"
  say "smoke: ready, $seen simulated messages through store-telemetry"
  "$@"
  for i in $(seq 1 100); do [ -e "$state/state.redb" ] && break; sleep 0.1; done
  [ -e "$state/state.redb" ] || fail "no state saved in $state"
  say "smoke: stopped, state saved ($(du -h "$state/state.redb" | cut -f1))"
}

lint
runtime=""
for r in podman docker; do
  if command -v "$r" >/dev/null 2>&1 && "$r" info >/dev/null 2>&1; then runtime=$r; break; fi
done
bin="${1:-}"
if [ -z "$bin" ]; then
  cargo build --release --locked --bin rulechain
  bin="${CARGO_TARGET_DIR:-target}/release/rulechain"
fi
client="$bin"
free_ports
work="$(mktemp -d "${TMPDIR:-/tmp}/rulechain-container.XXXXXX")"
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

if [ -n "$runtime" ]; then
  say "building the image with $runtime"
  "$runtime" build -t rulechain:check -f Containerfile \
    --build-arg "RULECHAIN_COMMIT=$(git rev-parse --short=10 HEAD 2>/dev/null || echo unknown)" .
  "$runtime" volume rm -f rulechain-check-state >/dev/null 2>&1 || true
  "$runtime" run -d --name rulechain-check -p "127.0.0.1:$mqtt:1883" -p "127.0.0.1:$http:8080" \
    -v rulechain-check-state:/var/lib/rulechain rulechain:check >/dev/null
  "$runtime" logs -f rulechain-check > "$work/engine.log" 2>&1 &
  state="$work/state"
  stop_container() {
    "$runtime" stop -t 20 rulechain-check >/dev/null
    mkdir -p "$state"
    "$runtime" cp rulechain-check:/var/lib/rulechain/state.redb "$state/" >/dev/null
    "$runtime" rm rulechain-check >/dev/null
  }
  smoke "$mqtt" "$http" "$state" stop_container
  say "the image rulechain:check is built and smoke-tested"
  exit 0
fi

say "no container runtime can run on this machine (podman/docker info fails): checking the Containerfile without one"
# The build stage, outside a container: the same commands, into the same tree.
root="$work/root"
mkdir -p "$root/usr/bin" "$root/etc/rulechain/rules" "$root/usr/share/man/man1" "$root/var/lib/rulechain"
cp "$bin" "$root/usr/bin/rulechain"
"$bin" man > "$root/usr/share/man/man1/rulechain.1"
cp deploy/container/rulechain.yaml deploy/package/devices.yaml "$root/etc/rulechain/"
cp rules/*.yaml "$root/etc/rulechain/rules/"
# The runtime stage: the image's config, its absolute paths moved under the tree, its ports
# moved to free ones on the loopback.
sed -e "s|/var/lib/rulechain|$root/var/lib/rulechain|" \
    -e "s|0.0.0.0:1883|127.0.0.1:$mqtt|" -e "s|0.0.0.0:8080|127.0.0.1:$http|" \
    "$root/etc/rulechain/rulechain.yaml" > "$root/etc/rulechain/rulechain.yaml.new"
mv "$root/etc/rulechain/rulechain.yaml.new" "$root/etc/rulechain/rulechain.yaml"
(cd "$root/var/lib/rulechain" && RULECHAIN_CONFIG="$root/etc/rulechain/rulechain.yaml" \
  exec "$root/usr/bin/rulechain" run > "$work/engine.log" 2>&1) &
engine=$!
stop_engine() { kill -TERM "$engine"; wait "$engine" || fail "the engine did not stop cleanly: $(tail -5 "$work/engine.log")"; }
smoke "$mqtt" "$http" "$root/var/lib/rulechain" stop_engine
"$root/usr/bin/rulechain" healthcheck --url "http://127.0.0.1:$http/livez" --timeout 1s 2>/dev/null \
  && fail "the engine still answers after the stop"
say "the Containerfile's stages built and smoke-tested outside a container"
