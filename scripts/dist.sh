#!/usr/bin/env bash
# Everything an operator installs, from a fresh clone, in one command: the release binary, the
# container image (where a container runtime can run; else its stages, checked without one)
# and the Debian package, each checked (scripts/container.sh, scripts/package.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin rulechain
scripts/container.sh "${CARGO_TARGET_DIR:-target}/release/rulechain"
scripts/package.sh
echo "done: $(ls target/debian/rulechain_*.deb | tail -1), and the image (above)"
