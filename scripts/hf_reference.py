"""Reference fixtures from Hugging Face `transformers` for mixpool's import/export tests.

    python scripts/hf_reference.py generate OUT_DIR [NAME…]  # tiny random models + expected outputs
    python scripts/hf_reference.py perplexity MODEL_DIR TEXT_FILE
                                                           # perplexity as mixpool computes it
    python scripts/hf_reference.py choices MODEL_DIR QUESTIONS_FILE
                                                           # multiple-choice figures, likewise

`scripts/hf-reference.sh` sets up the venv (torch 2.11.0, transformers) and runs both: it
regenerates the committed fixtures, then checks that a merged model exported by mixpool
loads in transformers with the perplexity mixpool reported.
"""

import json
import math
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ROOT = Path(__file__).resolve().parent.parent
# The fixture models the multiple-choice figures are committed for: fp32 and fp16 weights,
# Llama, Qwen2 and GPT-2, each with its BPE tokenizer.
CHOICE_MODELS = ["llama_gqa_untied", "qwen2_bias", "gpt2"]
VOCAB = 320  # the model's; the tokenizer has 300 entries
CONTEXT = 64


def reference_text() -> str:
    """Real English: the opening of this project's README, up to a paragraph end."""
    text = (ROOT / "README.md").read_text()
    return text[: text.index("\n\n", 1200)]


def train_tokenizer(text: str, path: Path) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([text], trainer)
    tok.save(str(path))
    return tok


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random (biases and norms too), so that each one is tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("norm.weight") or ".ln_" in name or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.05 * noise)


def perplexity(model, ids: list[int], bos: int) -> dict:
    """mixpool's protocol: [BOS] + ids in non-overlapping windows of the context length."""
    ids = [bos] + ids
    predicted = len(ids) - 1
    context = model.config.max_position_embeddings if hasattr(model.config, "max_position_embeddings") else model.config.n_positions
    nll = 0.0
    with torch.no_grad():
        for start in range(0, predicted, context):
            n = min(context, predicted - start)
            window = torch.tensor([ids[start : start + n + 1]])
            logits = model(window[:, :-1]).logits.float()
            nll += torch.nn.functional.cross_entropy(
                logits[0], window[0, 1:], reduction="sum"
            ).item()
    return {"nll": nll, "tokens": predicted, "perplexity": math.exp(nll / predicted)}


def old_style(config_path: Path) -> None:
    """Rewrites a config.json as transformers 4 wrote it (rope_theta, rope_scaling,
    torch_dtype), the form most published checkpoints have."""
    c = json.loads(config_path.read_text())
    rope = c.pop("rope_parameters")
    c["rope_theta"] = rope.pop("rope_theta")
    c["rope_scaling"] = rope if rope.get("rope_type") != "default" else None
    c["torch_dtype"] = c.pop("dtype")
    config_path.write_text(json.dumps(c, indent=2) + "\n")


# What transformers 4.x writes for every config when asked for all fields
# (`to_json_string(use_diff=False)`, as conversion tools do): generation settings, labels,
# output switches. Taken from transformers 4.57's `PretrainedConfig().to_dict()`.
PRETRAINED_CONFIG_4X = {
    "return_dict": True, "output_hidden_states": False, "torchscript": False,
    "pruned_heads": {}, "chunk_size_feed_forward": 0, "is_encoder_decoder": False,
    "is_decoder": False, "cross_attention_hidden_size": None, "add_cross_attention": False,
    "tie_encoder_decoder": False, "finetuning_task": None,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "task_specific_params": None, "problem_type": None, "tokenizer_class": None,
    "prefix": None, "sep_token_id": None, "decoder_start_token_id": None, "max_length": 20,
    "min_length": 0, "do_sample": False, "early_stopping": False, "num_beams": 1,
    "temperature": 1.0, "top_k": 50, "top_p": 1.0, "typical_p": 1.0,
    "repetition_penalty": 1.0, "length_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "num_return_sequences": 1,
    "output_scores": False, "return_dict_in_generate": False, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "remove_invalid_values": False,
    "exponential_decay_length_penalty": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "num_beam_groups": 1, "diversity_penalty": 0.0,
    "tf_legacy_loss": False, "use_bfloat16": False, "output_attentions": False,
}

# Fields that other tools add (a model loaded from GGUF and saved again, nanotron's Llama
# conversion), none of which changes the outputs at these values.
CONVERTER_FIELDS = {
    "_model_name_or_path": "HuggingFaceTB/SmolLM2-135M",
    "unk_token_id": 0,
    "is_llama_config": True,
    "rope_interleaved": False,
    "pretraining_tp": 1,
}

CHAT_TEMPLATE = (
    "{% for message in messages %}<s>{{ message['role'] }}\n{{ message['content'] }}</s>\n"
    "{% endfor %}{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def converted(d: Path) -> None:
    """Makes `d` a checkpoint as found in the wild: every default field, converters' extra
    fields, and a tokenizer saved by transformers with its chat template (chat_template.jinja
    beside tokenizer_config.json)."""
    from transformers import PreTrainedTokenizerFast

    c = json.loads((d / "config.json").read_text())
    c.update(PRETRAINED_CONFIG_4X)
    c.update(CONVERTER_FIELDS)
    (d / "config.json").write_text(json.dumps(c, indent=2) + "\n")
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(d / "tokenizer.json"), bos_token="<s>", eos_token="</s>", unk_token="<s>"
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(d)


def generate(out: Path, only: list[str]) -> None:
    torch.manual_seed(0)
    text = reference_text()
    common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=1)
    llama = dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-5,
        **common,
    )
    cases = {
        "llama_gqa_untied": (
            LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, tie_word_embeddings=False, **llama)),
            torch.float32,
            {"max_shard_size": "60KB"},
        ),
        "llama_tied_rope": (
            LlamaForCausalLM(
                LlamaConfig(
                    num_key_value_heads=4,
                    tie_word_embeddings=True,
                    rope_theta=500000.0,
                    rope_scaling={
                        "rope_type": "llama3",
                        "factor": 8.0,
                        "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 16,
                    },
                    **llama,
                )
            ),
            torch.bfloat16,
            {},
        ),
        "mistral": (
            MistralForCausalLM(MistralConfig(num_key_value_heads=2, sliding_window=4096, **llama)),
            torch.float32,
            {},
        ),
        "qwen2_bias": (
            Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=2, tie_word_embeddings=False, **llama)),
            torch.float16,
            {},
        ),
        "gpt2": (
            GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=CONTEXT, **common)),
            torch.float32,
            {},
        ),
        "llama_converted": (
            LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, tie_word_embeddings=True, **llama)),
            torch.float32,
            {},
        ),
    }
    for seed, (name, (model, dtype, save_args)) in enumerate(cases.items()):
        if only and name not in only:
            continue
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        for old in d.iterdir():
            old.unlink()
        tok = train_tokenizer(text, d / "tokenizer.json")
        randomize(model, seed)
        model = model.to(dtype).eval()
        model.save_pretrained(d, **save_args)
        if name == "llama_tied_rope":
            old_style(d / "config.json")
        if name == "llama_converted":
            converted(d)
        # The stored weights as a user loads them, computed in fp32 (buffers such as RoPE's
        # frequencies are recomputed, not the rounded copies of the model in memory).
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        g = torch.Generator().manual_seed(seed)
        input_ids = torch.randint(0, 300, (2, 24), generator=g)
        with torch.no_grad():
            logits = model(input_ids).logits.float()
        ids = tok.encode(text, add_special_tokens=False).ids
        expected = {
            "input_ids": input_ids.tolist(),
            "logits": [round(x, 7) for x in logits.flatten().tolist()],
            "text": text,
            "text_ids": ids,
            **perplexity(model, ids, bos=0),
        }
        (d / "expected.json").write_text(json.dumps(expected) + "\n")
        print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, ppl {expected['perplexity']:.4f}")


def check_perplexity(model_dir: Path, text_file: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    bos = model.config.bos_token_id
    docs = [json.loads(line)["text"] for line in text_file.read_text().splitlines() if line.strip()]
    nll, tokens = 0.0, 0
    for doc in docs:
        r = perplexity(model, tok.encode(doc, add_special_tokens=False).ids, bos)
        nll, tokens = nll + r["nll"], tokens + r["tokens"]
    print(json.dumps({"perplexity": math.exp(nll / tokens), "tokens": tokens}))


def question(r: dict) -> dict:
    """A record in any accepted shape as (context, choices, gold, task), by the conventions
    mixpool documents: ARC and PIQA as "Question: …\nAnswer:" with each choice after a space,
    HellaSwag's endings after a space, lm-eval-harness and mixpool's own records as given."""
    task = r.get("task") or "default"
    if "context" in r:
        return {"context": r["context"], "choices": r["choices"], "gold": int(r["gold"]), "task": task}
    if "query" in r:
        return {"context": r["query"], "choices": r["choices"], "gold": int(r["gold"]), "task": task}
    if "answerKey" in r:
        c = r["choices"]
        return {
            "context": f"Question: {r['question']}\nAnswer:",
            "choices": [" " + t for t in c["text"]],
            "gold": c["label"].index(r["answerKey"]),
            "task": task,
        }
    if "endings" in r:
        return {"context": r["ctx"], "choices": [" " + e for e in r["endings"]], "gold": int(r["label"]), "task": task}
    return {
        "context": f"Question: {r['goal']}\nAnswer:",
        "choices": [" " + r["sol1"], " " + r["sol2"]],
        "gold": int(r["label"]),
        "task": task,
    }


def choice_figures(model_dir: Path, questions_file: Path) -> dict:
    """mixpool's multiple-choice convention, computed with transformers: for each choice,
    ll = the sum of the log-probabilities of its tokens after BOS and the context (context and
    choice tokenised apart, the context cut from the left to fit the window); per task the
    mean of -ll(gold) / (gold bytes * ln 2), the share of questions whose gold choice has the
    highest ll per byte (ties to the lowest index) and by raw ll; then macro means over tasks.
    The questions are JSONL in any shape mixpool accepts (see `question`). A model
    directory without tokenizer.json is byte-level: ids are UTF-8 bytes, BOS is 256."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if (model_dir / "tokenizer.json").exists():
        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        encode = lambda text: tok.encode(text, add_special_tokens=False).ids  # noqa: E731
        bos = model.config.bos_token_id
    else:
        encode = lambda text: list(text.encode())  # noqa: E731
        bos = 256
    c = model.config
    window = getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None) or c.context_length
    tasks: dict[str, list] = {}
    with torch.no_grad():
        for line in questions_file.read_text().splitlines():
            if not line.strip():
                continue
            q = question(json.loads(line))
            context = encode(q["context"])
            lls = []
            for choice in q["choices"]:
                ids = encode(choice)
                keep = min(len(context), window - len(ids))
                seq = torch.tensor([[bos] + context[len(context) - keep :] + ids])
                logp = torch.log_softmax(model(seq[:, :-1]).logits.float()[0], dim=-1)
                targets = seq[0, 1:]
                token_lp = logp[torch.arange(len(targets)), targets]
                lls.append(token_lp[-len(ids) :].double().sum().item())
            size = [len(choice.encode()) for choice in q["choices"]]
            gold = q["gold"]
            best = lambda value: max(range(len(lls)), key=lambda k: (value(k), -k))  # noqa: E731
            tasks.setdefault(q.get("task", "default"), []).append((
                -lls[gold] / (size[gold] * math.log(2)),
                best(lambda k: lls[k] / size[k]) == gold,
                best(lambda k: lls[k]) == gold,
            ))
    per_task = {
        name: {
            "bits_per_byte_gold": sum(r[0] for r in rows) / len(rows),
            "accuracy": sum(r[1] for r in rows) / len(rows),
            "accuracy_raw": sum(r[2] for r in rows) / len(rows),
            "n": len(rows),
        }
        for name, rows in tasks.items()
    }
    mean = lambda key: sum(t[key] for t in per_task.values()) / len(per_task)  # noqa: E731
    return {
        "bits_per_byte_gold": mean("bits_per_byte_gold"),
        "accuracy": mean("accuracy"),
        "accuracy_raw": mean("accuracy_raw"),
        "n": sum(t["n"] for t in per_task.values()),
        "per_task": per_task,
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["generate"]:
        generate(Path(sys.argv[2]), sys.argv[3:])
    elif sys.argv[1:2] == ["perplexity"]:
        check_perplexity(Path(sys.argv[2]), Path(sys.argv[3]))
    elif sys.argv[1:2] == ["choices"]:
        print(json.dumps(choice_figures(Path(sys.argv[2]), Path(sys.argv[3]))))
    elif sys.argv[1:2] == ["choices-expected"]:
        # The committed figures of the fixture models on the fixture question files.
        fixtures = ROOT / "tests" / "fixtures"
        expected = {
            model: {
                f.stem: choice_figures(fixtures / "hf" / model, f)
                for f in sorted((fixtures / "choices").glob("*.jsonl"))
            }
            for model in CHOICE_MODELS
        }
        (fixtures / "choices" / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    else:
        sys.exit(__doc__)
