#!/usr/bin/env bash
# `scripts/pg-bundle.sh OUT.tar.xz`: this machine's PostgreSQL server (initdb, pg_ctl,
# postgres, pg_isready, psql) with the shared libraries they load, packed to run on a machine
# that has none and cannot install one (the GPU machine bench/gpu.sh runs on). The
# executables find their share/ and lib/ folders relative to themselves, so the tree is
# unpacked anywhere; `bench/gpu.sh` does that and starts it on 127.0.0.1:5432.
set -euo pipefail
out=$(realpath "$1")
pg=$(ls -d /usr/lib/postgresql/* | sort -V | tail -1)
version=$(basename "$pg")
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/pg"
mkdir -p "$root$pg/bin" "$root$pg/lib" "$root/usr/share/postgresql" "$root/libs"
bins=(initdb pg_ctl postgres pg_isready psql)
for b in "${bins[@]}"; do cp "$pg/bin/$b" "$root$pg/bin/"; done
# The modules initdb loads (PL/pgSQL, text search dictionaries, encoding conversions);
# not the LLVM JIT (started with jit=off).
find "$pg/lib" -maxdepth 1 -name '*.so' ! -name 'llvmjit*' -exec cp {} "$root$pg/lib/" \;
cp -r "/usr/share/postgresql/$version" "$root/usr/share/postgresql/"
# Every library the executables and modules link, except the C library's own.
for f in "$root$pg"/bin/* "$root$pg"/lib/*.so; do ldd "$f" 2>/dev/null; done |
    awk '/=> \//{print $3}' | sort -u |
    grep -Ev '/(libc|libm|libdl|libpthread|librt|libresolv|ld-linux[^/]*)\.so' |
    xargs -I{} cp -L {} "$root/libs/"
cp -r /usr/share/zoneinfo "$root/zoneinfo" 2>/dev/null || true
tar -C "$stage" -cJf "$out" pg
echo "$out: PostgreSQL $version, $(du -h "$out" | cut -f1)"
