#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU and python torch 2.11.0 (its libtorch is
# used through LD_LIBRARY_PATH). `make gpu-bundle` first puts beside it, in gpu-bundle/, the
# binaries, the corpus and this machine's PostgreSQL server with its libraries (started here
# on 127.0.0.1:5432 where none answers: GPU machines have none and cannot install one).
#
# `bench/gpu.sh [SECTION…]`, by default `cli engine choices sweep`:
#   cli         the command line on cuda:0 end to end (pre-train, train, merge, evaluate on
#               text and on cloze questions)
#   engine      base-130m training and evaluation throughput, MFU (examples/gpu_bench.rs)
#   choices     multiple-choice scoring beside text evaluation (benches/choices.rs), tiny,
#               small and base-130m
#   sweep       the resident sweep's overhead per mixture beside one score job per mixture
#               and the file-based steps (benches/sweep.rs), tiny and base-130m unit models
#   experiment  the paper's protocol through the service with a base-130m base; the report
#               goes to $RESULTS (default docs/results)
set -euo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH="$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib"
BUNDLE=$(realpath gpu-bundle)
WORK=$(mktemp -d)
chmod 755 "$WORK"
tar -C "$WORK" -xJf "$BUNDLE/bin.tar.xz"
BIN="$WORK/bin"
if [ -z "${MIXPOOL_CORPUS:-}" ]; then
    tar -C "$WORK" -xJf "$BUNDLE/corpus.tar.xz"
    export MIXPOOL_CORPUS="$WORK/corpus"
fi

postgres() {
    if (echo >/dev/tcp/127.0.0.1/5432) 2>/dev/null; then return; fi
    tar -C "$WORK" -xJf "$BUNDLE/pg.tar.xz"
    local bin data="$WORK/pgdata"
    bin=$(ls -d "$WORK"/pg/usr/lib/postgresql/*/bin)
    [ -e /usr/share/zoneinfo/UTC ] || cp -r "$WORK/pg/zoneinfo" /usr/share/zoneinfo
    mkdir "$data"
    as_pg() {
        if [ "$(id -u)" = 0 ]; then
            chown -R 65534 "$data"
            setpriv --reuid=65534 --regid=65534 --clear-groups env LD_LIBRARY_PATH="$WORK/pg/libs" "$@"
        else
            env LD_LIBRARY_PATH="$WORK/pg/libs" "$@"
        fi
    }
    as_pg "$bin/initdb" -D "$data" -A trust -U postgres >/dev/null
    as_pg "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w start \
        -o "-p 5432 -k $data -c listen_addresses=127.0.0.1 -c jit=off -c max_connections=200" >/dev/null
    echo "PostgreSQL from the bundle on 127.0.0.1:5432"
}

run() { echo "+ mixpool $*"; "$BIN/mixpool" "$@" --device cuda:0; }

cli() {
    run local pretrain --preset tiny --data "$MIXPOOL_CORPUS/code_c.jsonl" --out "$WORK/base" --tokens 409600
    run local train --base "$WORK/base" --data "$MIXPOOL_CORPUS/code_python.jsonl" --out "$WORK/a" --tokens 204800
    run local train --base "$WORK/base" --data "$MIXPOOL_CORPUS/religion.jsonl" --out "$WORK/b" --tokens 204800
    run local merge "$WORK/a" "$WORK/b" --out "$WORK/ab"
    head -n 50 "$MIXPOOL_CORPUS/speeches.jsonl" >"$WORK/eval.jsonl"
    for m in base a b ab; do
        run local eval --model "$WORK/$m" --data "$WORK/eval.jsonl" | grep -E '"(perplexity|bits_per_byte)"' | head -2
    done
    "$BIN/mixpool" local cloze --corpus "$MIXPOOL_CORPUS" --questions 50 --skip 400 --out "$WORK/cloze.jsonl"
    for m in base ab; do
        run local eval --model "$WORK/$m" --choices "$WORK/cloze.jsonl" | grep -E '^  "(bits_per_byte_gold|accuracy|n)"'
    done
}

choices() { "$BIN/choices" --device cuda:0 --threads 16 --presets tiny,small,base-130m; }

engine() { "$BIN/gpu_bench"; }

sweep() {
    postgres
    "$BIN/sweep" --device cuda:0 --preset tiny
    "$BIN/sweep" --device cuda:0 --preset base-130m --mixtures 36 --sample 8
}

experiment() {
    postgres
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/mixpool_paper \
        "$BIN/mixpool" experiment paper --preset base-130m --device cuda:0 \
        --listen 127.0.0.1:0 --data "$WORK/paper" --out "${RESULTS:-docs/results}"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for section in "${@:-cli engine choices sweep}"; do
    for s in $section; do
        echo "== $s"
        "$s"
    done
done
