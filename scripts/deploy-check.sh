#!/usr/bin/env bash
# Validates deploy/ offline (scripts/deploy_check.py) with kubernetes-validate from PyPI, in
# a venv made once in the cache. usage: scripts/deploy-check.sh MIXPOOL_BINARY
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MIXPOOL_CACHE:-$HOME/.cache/mixpool}/deploy-venv"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import kubernetes_validate, yaml" 2>/dev/null; then
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install -q "kubernetes-validate==1.37.*" "pyyaml==6.*" >&2
fi
exec "$VENV/bin/python" scripts/deploy_check.py "$1"
