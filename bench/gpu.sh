#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU and python torch 2.11.0 (its libtorch is
# used through LD_LIBRARY_PATH). Build the binaries beside it first with `make gpu-bundle`.
# Runs the command line on cuda:0 end to end, then base-130m training throughput and MFU.
set -euo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH="$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib"
export MIXPOOL_CORPUS="${MIXPOOL_CORPUS:-$(realpath ../shared/corpus)}"
BIN=gpu-bundle
WORK=$(mktemp -d)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

run() { echo "+ mixpool $*"; "$BIN/mixpool" "$@" --device cuda:0; }
run local pretrain --preset tiny --data "$MIXPOOL_CORPUS/code_c.jsonl" --out "$WORK/base" --tokens 409600
run local train --base "$WORK/base" --data "$MIXPOOL_CORPUS/code_python.jsonl" --out "$WORK/a" --tokens 204800
run local train --base "$WORK/base" --data "$MIXPOOL_CORPUS/religion.jsonl" --out "$WORK/b" --tokens 204800
run local merge "$WORK/a" "$WORK/b" --out "$WORK/ab"
head -n 50 "$MIXPOOL_CORPUS/speeches.jsonl" > "$WORK/eval.jsonl"
for m in base a b ab; do run local eval --model "$WORK/$m" --data "$WORK/eval.jsonl" | grep -E '"(perplexity|bits_per_byte)"' | head -2; done
"$BIN/gpu_bench"
