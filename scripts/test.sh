#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run` calls exactly this). It installs the services
# the tests need (scripts/services.sh: Mosquitto, Redis and the rest from Debian); the tests start their own
# instances on free 127.0.0.1 ports and stop them by pid.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step prints how long the one before it took, so a slow CI run shows where the time went.
started=$SECONDS
last=$SECONDS
step() {
  if [ "$last" != "$started" ] || [ "$SECONDS" != "$started" ]; then
    printf '    (%ss)\n' "$((SECONDS - last))"
  fi
  last=$SECONDS
  printf '\n==> %s\n' "$*"
}
scratch=""
finish() {
  local rc=$?
  printf "    (%ss)\n\n==> total %ss\n" "$((SECONDS - last))" "$((SECONDS - started))"
  if [ -n "$scratch" ]; then
    if [ "$rc" = 0 ]; then rm -rf "$scratch"; else echo "the tests' files are kept in $scratch"; fi
  fi
}
trap finish EXIT

step "test services"
scripts/services.sh

# Every test's directories and files go under one scratch directory: removed when the suite
# passes, kept (and named) when it fails.
# World-readable as /tmp is: Mosquitto drops root for its own user, and must read the
# certificates and write the persistence file the tests put there.
scratch="$(mktemp -d "${TMPDIR:-/tmp}/rulechain-tests.XXXXXX")"
chmod 755 "$scratch"
export TMPDIR="$scratch"

step "formatting"
cargo fmt --all -- --check

step "lints"
cargo clippy --locked --all-targets -- -D warnings

step "unit, integration and property tests"
cargo test --locked --all-targets

step "doc tests"
cargo test --locked --doc

step "the example rules and recordings, as a user checks them"
# One release build serves the binary and the soak: `cargo bench --no-run` builds the `rulechain`
# binary too, and a separate `cargo build --release` would compile the dependencies twice (the
# benches' dev-dependencies change some of their features).
cargo bench --locked --no-run
bin="${CARGO_TARGET_DIR:-target}/release/rulechain"
"$bin" validate rules/
"$bin" validate --config examples/rulechain.yaml
for rec in examples/*.jsonl; do
  "$bin" dry-run --config examples/rulechain.yaml --input "$rec" | tail -n 1
done
"$bin" test rules/ tests/rules/ examples/rules/
"$bin" test --config examples/rulechain.yaml rules/
# The CI snippet users copy, with the rules directory itself as the base (equal; a checkout
# without git history works too).
RULECHAIN="$bin" OUT="$(mktemp)" deploy/ci/rules-check.sh rules removed

step "the container image (or, where no container runtime can run, its stages outside one)"
scripts/container.sh "$bin"

step "the Debian package: built, its contents, its unit, run from the unpacked package"
PACKAGE_INSTALL=1 scripts/package.sh

step "supply chain: licences, bans, sources (and advisories where they can be fetched)"
scripts/deny.sh

step "the dashboard in a real browser (Debian's chromium, playwright-core) against run --demo"
node tests/browser/dashboard.mjs "$bin"

step "soak: 2 minutes of telemetry through the example chains and sinks; memory must not grow"
cargo bench --locked --bench soak -- --minutes 2 --rate 2000 --devices 1000 --ws 100 --sample 10 --check --max-slope 3
