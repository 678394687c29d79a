#!/usr/bin/env bash
# Installs Debian packages without starting their daemons: a policy-rc.d that refuses is put in
# place for the install when the machine has none (so a Mosquitto package does not end up
# listening on 1883), and removed after. Usage: scripts/apt-install.sh PACKAGE...
set -euo pipefail
[ $# -gt 0 ] || exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
placed=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  placed=yes
fi
echo "installing $* (apt-get)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
[ -z "$placed" ] || $sudo rm -f /usr/sbin/policy-rc.d
