//! Which config fields an import may leave unread: those `transformers` writes for every
//! model, those converters write with the value that means what the engine does, and those
//! that do not change a causal LM's outputs.

use serde_json::Value;

use super::Strictness;

/// Every attribute `transformers`' `PretrainedConfig` writes by default (4.x and 5.x), less
/// those that change a causal LM's outputs, which are read and checked like any other
/// (`tie_word_embeddings`, `add_cross_attention`, `is_encoder_decoder`, `pruned_heads`).
/// Generation settings, labels and output switches do not change the logits.
const PRETRAINED_CONFIG: &[&str] = &[
    "_name_or_path",
    "_commit_hash",
    "_attn_implementation",
    "_attn_implementation_autoset",
    "attn_implementation",
    "architectures",
    "bad_words_ids",
    "begin_suppress_tokens",
    "bos_token_id",
    "chunk_size_feed_forward",
    "cross_attention_hidden_size",
    "decoder_start_token_id",
    "diversity_penalty",
    "do_sample",
    "dtype",
    "early_stopping",
    "encoder_no_repeat_ngram_size",
    "eos_token_id",
    "exponential_decay_length_penalty",
    "finetuning_task",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "gradient_checkpointing",
    "id2label",
    "is_decoder",
    "label2id",
    "length_penalty",
    "max_length",
    "min_length",
    "model_type",
    "no_repeat_ngram_size",
    "num_beam_groups",
    "num_beams",
    "num_labels",
    "num_return_sequences",
    "output_attentions",
    "output_hidden_states",
    "output_past",
    "output_scores",
    "pad_token_id",
    "prefix",
    "problem_type",
    "remove_invalid_values",
    "repetition_penalty",
    "return_dict",
    "return_dict_in_generate",
    "sep_token_id",
    "suppress_tokens",
    "task_specific_params",
    "temperature",
    "tf_legacy_loss",
    "tie_encoder_decoder",
    "tokenizer_class",
    "top_k",
    "top_p",
    "torch_dtype",
    "torchscript",
    "transformers_version",
    "typical_p",
    "use_bfloat16",
    "xla_device",
];

/// Fields outside `transformers`' own configs that converters write: (field, the value as
/// JSON that means what this engine does, why). Another value is refused with the reason.
const NEUTRAL: &[(&str, &str, &str)] = &[
    ("is_llama_config", "true", "marks a Llama config"),
    (
        "rope_interleaved",
        "false",
        "rotary embeddings on the two halves of each head, as implemented",
    ),
    (
        "use_qk_norm",
        "false",
        "no normalisation of queries and keys",
    ),
    (
        "qk_layernorm",
        "false",
        "no normalisation of queries and keys",
    ),
    (
        "use_scaled_rope",
        "false",
        "rotary scaling comes from rope_scaling alone",
    ),
    (
        "embedding_multiplier",
        "1.0",
        "no scaling of the embeddings",
    ),
    ("logits_scaling", "1.0", "no scaling of the logits"),
    ("residual_multiplier", "1.0", "no scaling of the residuals"),
];

/// Fields of any `transformers` config that do not change a causal LM's outputs (all that
/// `--strict` accepts besides what the engine reads).
const HARMLESS: &[&str] = &[
    "_name_or_path",
    "architectures",
    "model_type",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "use_cache",
    "initializer_range",
    "pad_token_id",
    "attention_dropout",
    "hidden_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "output_hidden_states",
    "output_attentions",
    "return_dict",
    "chunk_size_feed_forward",
    "id2label",
    "label2id",
    "problem_type",
    "tokenizer_class",
    "task_specific_params",
    "summary_type",
    "summary_use_proj",
    "summary_activation",
    "summary_proj_to_labels",
    "summary_first_dropout",
    "torchscript",
    "max_window_layers",
];

/// Whether an unread field may stay unread: `None` to refuse it, `Some(None)` to accept it
/// silently, `Some(Some(why))` to accept it and report it.
pub(super) fn judge(
    field: &str,
    value: &Value,
    strictness: Strictness,
) -> Result<Option<String>, String> {
    if HARMLESS.contains(&field) {
        return Ok(None);
    }
    if strictness == Strictness::Strict {
        return Err("this field is not understood, so the model could differ (--strict)".into());
    }
    if PRETRAINED_CONFIG.contains(&field) {
        return Ok(None);
    }
    if let Some((_, neutral, why)) = NEUTRAL.iter().find(|(name, _, _)| *name == field) {
        let neutral: Value = serde_json::from_str(neutral).expect("valid JSON");
        // 1 and 1.0 are the same number to the tool that wrote the file.
        let same =
            *value == neutral || (value.as_f64().is_some() && value.as_f64() == neutral.as_f64());
        return if same {
            Ok(Some(why.to_string()))
        } else {
            Err(format!("only {neutral} is implemented: {why}"))
        };
    }
    if field.ends_with("_token_id") || field.ends_with("_token_ids") {
        return Ok(Some("a token id: the forward pass does not read it".into()));
    }
    if field.starts_with('_') {
        return Ok(Some(
            "private metadata of the tool that wrote the file".into(),
        ));
    }
    if value.is_null() {
        return Ok(Some("unset".into()));
    }
    Err("this field is not understood, so the model could differ".into())
}
