#!/usr/bin/env bash
# Regenerates tests/fixtures/hf with real Hugging Face transformers (tiny random Llama, Qwen2
# and GPT-2 models, their logits and perplexities), then checks the way back: a base imported
# from a fixture, two units trained on real text, merged and exported by mixpool, loads in
# transformers and gives the perplexity mixpool reported. The venv (torch 2.11.0,
# transformers) is set up once in the cache. Run from the repository root.
set -euo pipefail
CACHE="${MIXPOOL_CACHE:-$HOME/.cache/mixpool}"
VENV="$CACHE/hf-venv"
if ! "$VENV/bin/python" -c "import transformers, torch" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --find-links "$CACHE/wheels" torch==2.11.0 transformers safetensors
fi
"$VENV/bin/python" scripts/hf_reference.py generate tests/fixtures/hf
"$VENV/bin/python" scripts/hf_reference.py choices-expected

export LIBTORCH=$(scripts/libtorch.sh) CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
corpus=$(scripts/corpus.sh)
cargo build --release -q
mixpool="$CARGO_TARGET_DIR/release/mixpool"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
files=("$corpus"/*.jsonl)
head -n 40 "${files[0]}" > "$work/a.jsonl"
head -n 40 "${files[1]}" > "$work/b.jsonl"
tail -n 3 "${files[2]}" > "$work/eval.jsonl"
"$mixpool" local import tests/fixtures/hf/llama_gqa_untied --out "$work/base" > /dev/null
for unit in a b; do
    "$mixpool" local train --base "$work/base" --data "$work/$unit.jsonl" --out "$work/$unit" \
        --tokens 8192 --seq-len 64 --batch-tokens 1024 --micro-batch 16 --lr 1e-3 \
        --device cpu > /dev/null
done
"$mixpool" local merge "$work/a" "$work/b" --out "$work/merged" --device cpu > /dev/null
"$mixpool" local export "$work/merged" --out "$work/export" > /dev/null
ours=$("$mixpool" local eval --model "$work/merged" --data "$work/eval.jsonl" --device cpu |
    "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["perplexity"])')
theirs=$("$VENV/bin/python" scripts/hf_reference.py perplexity "$work/export" "$work/eval.jsonl" |
    "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["perplexity"])')
echo "merged model, exported: mixpool perplexity $ours, transformers $theirs"
"$VENV/bin/python" -c "import sys; a, b = $ours, $theirs; sys.exit(0 if abs(a - b) / b <= 1e-4 else 'the exported model differs')"

# Multiple-choice figures on a byte-level preset, exported: mixpool's against transformers'.
"$mixpool" local pretrain --preset tiny --data "$work/a.jsonl" --out "$work/tiny" \
    --tokens 8192 --seq-len 64 --batch-tokens 1024 --micro-batch 16 --device cpu > /dev/null
"$mixpool" local export "$work/tiny" --out "$work/tiny-export" > /dev/null
for shape in tests/fixtures/choices/*.jsonl; do
    "$mixpool" local eval --model "$work/tiny" --choices "$shape" --device cpu > "$work/ours.json"
    "$VENV/bin/python" scripts/hf_reference.py choices "$work/tiny-export" "$shape" > "$work/theirs.json"
    "$VENV/bin/python" - "$work/ours.json" "$work/theirs.json" "$shape" <<'EOF'
import json, sys
ours, theirs = (json.load(open(p)) for p in sys.argv[1:3])
for key in ("bits_per_byte_gold", "accuracy", "accuracy_raw", "n"):
    a, b = ours[key], theirs[key]
    assert abs(a - b) <= 1e-6 * max(abs(b), 1e-12), f"{sys.argv[3]}: {key} {a} against {b}"
print(f"byte-level tiny, {sys.argv[3]}: bits per byte of gold {ours['bits_per_byte_gold']:.6f} (transformers {theirs['bits_per_byte_gold']:.6f}), accuracy {ours['accuracy']:.3f}")
EOF
done
