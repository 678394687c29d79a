#!/usr/bin/env bash
# Installs the services the tests talk to, from Debian's packages: Mosquitto (MQTT),
# VictoriaMetrics (an InfluxDB-compatible write API), aiosmtpd (an SMTP sink writing a
# Maildir), openssl (the tests make a CA and server certificates for their TLS listeners),
# Prometheus (a test has it scrape /metrics), Redis (the cluster's leases and fencing), Chromium (the dashboard's browser test drives it headless) and playwright-core from npm
# (into tests/browser/node_modules, from its lockfile; it never downloads a browser). The tests
# start their own instances on free loopback ports and stop them by pid.
# Packages are installed without starting their daemons: a policy-rc.d that refuses is put in
# place for the install when the machine has none, so nothing ends up listening on 1883.
set -euo pipefail

need=()
[ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
[ -x /usr/bin/victoria-metrics ] || need+=(victoria-metrics)
/usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || need+=(python3-aiosmtpd)
command -v openssl >/dev/null || need+=(openssl)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/prometheus ] || need+=(prometheus)
[ -x /usr/bin/redis-server ] || need+=(redis-server)
command -v npm >/dev/null || need+=(npm)

"$(dirname "$0")/apt-install.sh" ${need[@]+"${need[@]}"}
# playwright-core only: the browser is Debian's /usr/bin/chromium, so no browser download.
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "installing playwright-core (npm ci, tests/browser)"
  (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
fi
(/usr/sbin/mosquitto -h || true) | head -n 1
echo "$(/usr/bin/chromium --version 2>/dev/null | head -n 1)"
echo "$(/usr/bin/prometheus --version 2>&1 | head -n 1)"
echo "playwright-core $(node -p 'require("./tests/browser/node_modules/playwright-core/package.json").version')"
echo "victoria-metrics $(/usr/bin/victoria-metrics -version 2>&1 | head -n 1)"
echo "$(/usr/bin/redis-server --version | head -n 1)"
echo "aiosmtpd $(/usr/bin/python3 -c 'import aiosmtpd; print(aiosmtpd.__version__)')"
