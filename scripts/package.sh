#!/usr/bin/env bash
# Builds rulechain's Debian package (target/debian/rulechain_*.deb) with cargo-deb: the binary,
# the systemd unit, the packaged config (embedded broker on localhost), the example rules, the
# man page and the shell completions. Then checks it: its contents, its unit verified, and the
# engine run from the unpacked package with the packaged config (paths moved under a
# directory of its own: installing it would change this machine, and systemd does not run here).
#
#   scripts/package.sh            builds with cargo-deb (installed with `cargo install cargo-deb --locked` if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '%s\n' "$*"; }
fail() { say "package check FAILED: $*" >&2; exit 1; }
. scripts/engine-check.sh
target="${CARGO_TARGET_DIR:-target}"

command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked
cargo build --release --locked --bin rulechain
bin="$target/release/rulechain"
# What cargo-deb packs besides the binary (the asset paths say target/…).
mkdir -p target/package
"$bin" man | gzip -9n > target/package/rulechain.1.gz
"$bin" completions bash > target/package/rulechain.bash
"$bin" completions zsh > target/package/_rulechain
"$bin" completions fish > target/package/rulechain.fish
if [ "$target" != target ]; then mkdir -p target/release && cp "$bin" target/release/rulechain; fi
cargo deb --no-build --strip --output target/debian/ >/dev/null
deb=$(ls -t target/debian/rulechain_*.deb | head -1)
say "built $deb ($(du -h "$deb" | cut -f1))"

contents=$(dpkg-deb --contents "$deb")
for f in ./usr/bin/rulechain ./etc/rulechain/rulechain.yaml ./etc/rulechain/devices.yaml \
         ./etc/rulechain/rules/motor-overload.yaml ./usr/lib/systemd/system/rulechain.service \
         ./usr/share/man/man1/rulechain.1.gz ./usr/share/bash-completion/completions/rulechain \
         ./usr/share/zsh/vendor-completions/_rulechain ./usr/share/fish/vendor_completions.d/rulechain.fish; do
  grep -q " $f\$" <<<"$contents" || fail "$f is not in the package"
done
dpkg-deb --field "$deb" Depends | grep -q libc6 || fail "no dependency on libc6"
dpkg-deb --ctrl-tarfile "$deb" | tar -t | grep -q '^./conffiles$' || fail "no conffiles"
say "contents: the binary, the unit, the config (a conffile), the example rules, man page, completions"

work="$(mktemp -d "${TMPDIR:-/tmp}/rulechain-deb.XXXXXX")"
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
root="$work/root"
dpkg-deb -x "$deb" "$root"
if command -v systemd-analyze >/dev/null 2>&1; then
  sed "s|/usr/bin/rulechain|$root/usr/bin/rulechain|" "$root/usr/lib/systemd/system/rulechain.service" > "$work/rulechain.service"
  out=$(systemd-analyze verify --man=no "$work/rulechain.service" 2>&1) || fail "systemd-analyze: $out"
  [ -z "$out" ] || fail "systemd-analyze: $out"
  say "the packaged unit verifies"
fi
free_ports
mkdir -p "$root/var/lib/rulechain"
sed -e "s|/var/lib/rulechain|$root/var/lib/rulechain|" -e "s|127.0.0.1:1883|127.0.0.1:$mqtt|" \
    -e "s|127.0.0.1:8080|127.0.0.1:$http|" "$root/etc/rulechain/rulechain.yaml" > "$work/rulechain.yaml.new"
mv "$work/rulechain.yaml.new" "$root/etc/rulechain/rulechain.yaml"
(cd "$root/var/lib/rulechain" && RULECHAIN_CONFIG="$root/etc/rulechain/rulechain.yaml" \
  exec "$root/usr/bin/rulechain" run > "$work/engine.log" 2>&1) &
engine=$!
wait_ready "$root/usr/bin/rulechain" "$http" "$work/engine.log"
"$root/usr/bin/rulechain" --version
kill -TERM "$engine"; wait "$engine" || fail "the engine did not stop cleanly"
[ -e "$root/var/lib/rulechain/state.redb" ] || fail "no state saved"
say "the unpacked package runs with its config: ready, stopped, state saved"

# Installed for real, where this runs as root and is asked to (PACKAGE_INSTALL=1, as the test
# command does on its throwaway machine): dpkg installs it (its scripts enable the unit; they
# start it only where systemd runs), the installed binary finds the packaged config by itself,
# runs, stops with its state in /var/lib/rulechain, and the package is purged again.
if [ -n "${PACKAGE_INSTALL:-}" ] && [ "$(id -u)" = 0 ]; then
  if dpkg -s rulechain >/dev/null 2>&1; then
    say "rulechain is installed on this machine already: not installing over it"
  else
    dpkg -i "$deb" >/dev/null 2>&1 || fail "dpkg -i failed"
    trap '[ -n "${KEEP:-}" ] || rm -rf "$work"; dpkg --purge rulechain >/dev/null 2>&1 || true; rm -rf /var/lib/rulechain' EXIT
    [ -x /usr/bin/rulechain ] && [ -f /etc/rulechain/rulechain.yaml ] || fail "the installed files are missing"
    free_ports
    mkdir -p /var/lib/rulechain
    (cd / && exec env -u RULECHAIN_CONFIG /usr/bin/rulechain run --mqtt-listen "127.0.0.1:$mqtt" \
      --http-listen "127.0.0.1:$http" > "$work/installed.log" 2>&1) &
    engine=$!
    wait_ready /usr/bin/rulechain "$http" "$work/installed.log"
    grep -q "using the config /etc/rulechain/rulechain.yaml" "$work/installed.log" || fail "the packaged config was not found by itself"
    kill -TERM "$engine"; wait "$engine" || fail "the installed engine did not stop cleanly"
    [ -e /var/lib/rulechain/state.redb ] || fail "no state in /var/lib/rulechain"
    man -w rulechain >/dev/null 2>&1 || [ -f /usr/share/man/man1/rulechain.1.gz ] || fail "no man page installed"
    dpkg --purge rulechain >/dev/null
    rm -rf /var/lib/rulechain
    [ ! -e /usr/bin/rulechain ] || fail "the purge left the binary"
    say "installed with dpkg, ran with the packaged config found by itself, purged"
  fi
fi
