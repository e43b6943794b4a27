#!/usr/bin/env bash
# `scripts/chromium.sh`: makes sure Debian's Chromium and ChromeDriver are installed (the
# dashboard's browser tests drive them headless); installs the packages `chromium` and
# `chromium-driver` once where they are missing.
set -euo pipefail
have() { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }
have && exit 0
apt-get update -qq >&2 || true
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2
have || { echo "chromium and chromedriver are not in /usr/bin after installing them" >&2; exit 1; }
