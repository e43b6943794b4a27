#!/usr/bin/env bash
# Prints a folder of <domain>.jsonl files: ../shared/corpus where present, else a corpus
# built once into the cache from files that Debian packages install.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${MIXPOOL_CORPUS:-}" ]; then
    echo "$MIXPOOL_CORPUS"
elif [ -d ../shared/corpus ]; then
    realpath ../shared/corpus
else
    dest="${MIXPOOL_CACHE:-$HOME/.cache/mixpool}/corpus"
    if [ ! -f "$dest/tech_docs.jsonl" ]; then
        if ! ls /usr/share/man/man1/*.gz >/dev/null 2>&1 || [ ! -d /usr/include/linux ]; then
            apt-get update -qq >&2 && apt-get install -y -qq man-db manpages linux-libc-dev >&2
        fi
        python3 scripts/corpus.py "$dest"
    fi
    echo "$dest"
fi
