#!/usr/bin/env bash
# The end-to-end comparison, from a fresh clone: installs Mosquitto and gnuplot (apt-get) and
# Node-RED and the mqtt package (npm ci, into benches/compare/node_modules; nothing global),
# builds the release engine and the load generator, and runs every system side by side.
# Arguments go to the generator (see benches/compare/main.rs), e.g.
#   benches/compare/run.sh --qos 1 --rounds 3
#   benches/compare/run.sh --systems rulechain,bridge --rates 10000,20000 --engines /tmp/a,/tmp/b
# Results: target/compare/results-qos{0,1}.{md,csv,png}.
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
[ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v gnuplot >/dev/null || need+=(gnuplot-nox)
command -v npm >/dev/null || need+=(npm)
scripts/apt-install.sh ${need[@]+"${need[@]}"}
if [ ! -d benches/compare/node_modules/node-red ] || [ ! -d benches/compare/node_modules/mqtt ]; then
  echo "installing Node-RED and mqtt (npm ci, benches/compare)"
  (cd benches/compare && npm ci --no-audit --no-fund --silent)
fi
cargo build --release --locked
exec cargo bench --locked --bench compare -- "$@"
