#!/usr/bin/env bash
# Prints the bin folder of a venv (in the cache, made once) holding the API checkers the
# tests run: openapi-spec-validator (the OpenAPI document is valid 3.1) and schemathesis (a
# property-based fuzzer of the API, run against a seeded server), and pyarrow (the Parquet
# writer Hugging Face datasets use: the tests read the files it writes).
set -euo pipefail
VENV="${MIXPOOL_CACHE:-$HOME/.cache/mixpool}/api-venv"
if [ ! -x "$VENV/bin/schemathesis" ] || [ ! -x "$VENV/bin/openapi-spec-validator" ] ||
    ! "$VENV/bin/python" -c "import pyarrow" 2>/dev/null; then
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install -q "openapi-spec-validator==0.7.*" "schemathesis==4.*" "pyarrow==21.*" >&2
fi
echo "$VENV/bin"
