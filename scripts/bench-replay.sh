#!/usr/bin/env bash
# The replay bench: `rulechain dry-run` of 1M recorded messages through the example rules, output
# to /dev/null. Prints wall time, messages/s, CPU % and peak RSS. Usage: scripts/bench-replay.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
data=target/bench/replay-$n.jsonl
mkdir -p target/bench
[ -f "$data" ] || python3 scripts/gen-recording.py "$n" "$data"
cargo build --release -q
devices=target/bench/devices.yaml
python3 - "$devices" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    f.write("devices:\n")
    for d in range(1000):
        kind = ["pump", "fan", "pressure", "gateway"][d % 4]
        attrs = {"pump": "{rated_current: 10.0, max_temp: 80.0}", "fan": "{vibration_limit: 4.5}"}.get(kind, "{}")
        f.write(f"  - {{id: {kind}-{d}, type: {kind}, attributes: {attrs}}}\n")
PY
stats=$(mktemp)
/usr/bin/time -f "%e %U %S %M" -o "$stats" ./target/release/rulechain dry-run --rules rules --devices "$devices" --input "$data" >/dev/null
read -r wall user sys rss <"$stats"
rm -f "$stats"
python3 - "$n" "$wall" "$user" "$sys" "$rss" <<'PY'
import sys
n, wall, user, sys_, rss = int(sys.argv[1]), *map(float, sys.argv[2:])
print(f"replay: {n} messages in {wall:.2f} s = {n / wall / 1000:.0f}k msg/s, CPU {100 * (user + sys_) / wall:.0f}%, peak RSS {rss / 1024:.0f} MiB")
PY
