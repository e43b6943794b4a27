#!/usr/bin/env python3
"""Builds a small real multi-domain corpus where ../shared/corpus is absent.

Every domain comes from files that Debian packages install (the Python standard library, C
headers, licence texts, man pages), so nothing is downloaded from outside the registries.
Writes <out>/<domain>.jsonl with lines {"text", "domain", "source"}, shuffled with a fixed
seed, about 3 MB per domain.
"""
import glob
import gzip
import json
import os
import random
import sys
import sysconfig

LIMIT = 3_000_000
MAX_DOC = 60_000


def read(path):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return f.read(MAX_DOC).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


DOMAINS = {
    "code_python": lambda: glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "**", "*.py"), recursive=True),
    "code_c": lambda: glob.glob("/usr/include/**/*.h", recursive=True),
    "legal_licenses": lambda: glob.glob("/usr/share/common-licenses/*") + glob.glob("/usr/share/doc/*/copyright"),
    "tech_docs": lambda: glob.glob("/usr/share/man/man[1-8]/*.gz"),
}


def main(out):
    os.makedirs(out, exist_ok=True)
    for domain, find in DOMAINS.items():
        paths = sorted(p for p in find() if os.path.isfile(p))
        random.Random(0).shuffle(paths)
        size, lines = 0, []
        for path in paths:
            text = read(path)
            if not text or not text.strip():
                continue
            lines.append(json.dumps({"text": text, "domain": domain, "source": path}))
            size += len(text)
            if size >= LIMIT:
                break
        if len(lines) < 50:
            sys.exit(f"only {len(lines)} documents for {domain}: install the Debian packages that provide them")
        tmp = os.path.join(out, f"{domain}.jsonl.partial")
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, os.path.join(out, f"{domain}.jsonl"))
        print(f"{domain}: {len(lines)} documents, {size} characters", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
