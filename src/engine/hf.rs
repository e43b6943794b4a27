//! Hugging Face checkpoints in and out.
//!
//! [`import`] reads a directory as `transformers` writes it — `config.json`,
//! `model.safetensors` or shards named by `model.safetensors.index.json`, `tokenizer.json` —
//! for `LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM` and `GPT2LMHeadModel`,
//! and writes an engine model directory (fp32 weights, the engine's config, the checkpoint's
//! own config kept as `hf_config.json`, the tokenizer files). Every config field is either
//! understood, known not to change the model's outputs, or refused by name: an import never
//! gives a silently different model. [`export`] writes any engine model directory back in
//! the same layout, in the base's dtype.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tch::{Device, Kind, Tensor, nn::VarStore};

use super::checkpoint::{
    CONFIG_FILE, HF_CONFIG_FILE, LoadedModel, SIDE_FILES, TOKENIZER_FILE, WEIGHTS_FILE,
    copy_side_files, load_tokenizer, read_config,
};
use super::merge::Bytes;
use super::model::{Gpt2Config, LlamaConfig, Model, ModelConfig, llama::RopeScaling};

const INDEX_FILE: &str = "model.safetensors.index.json";

#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error(
        "{0}: missing (a Hugging Face model directory has config.json, model.safetensors or model.safetensors.index.json, and tokenizer.json)"
    )]
    Missing(String),
    #[error("config.json: unsupported {field} = {value}: {why}")]
    Unsupported {
        field: String,
        value: String,
        why: String,
    },
    #[error("config.json: {0}")]
    Config(String),
    #[error("{path}: {message}")]
    Weights { path: String, message: String },
    #[error(transparent)]
    Checkpoint(#[from] super::checkpoint::CheckpointError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HfError + '_ {
    move |source| HfError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What an import found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Imported {
    pub architecture: String,
    /// The checkpoint's weight dtype, which export writes back.
    pub dtype: String,
    pub parameters: i64,
    pub vocab_size: i64,
    pub context_length: i64,
    /// Config fields this engine does not know, accepted because their values are what the
    /// architecture does anyway (kept in `hf_config.json` for export).
    pub ignored: Vec<Ignored>,
}

/// A config field an import accepted without reading it, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Ignored {
    pub field: String,
    pub value: Value,
    pub why: String,
}

/// How strictly config fields are judged.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Strictness {
    /// Fields that `PretrainedConfig` writes, token ids, private metadata and fields at
    /// their architecture's default behaviour are accepted (the unknown ones reported).
    #[default]
    ByEffect,
    /// Only the fields the engine reads and a short list of known harmless ones.
    Strict,
}

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
fn judge(field: &str, value: &Value, strictness: Strictness) -> Result<Option<String>, String> {
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

/// Reads a config.json the way `transformers` means it.
fn hf_to_engine(
    config: &Map<String, Value>,
    strictness: Strictness,
) -> Result<(ModelConfig, String, Vec<Ignored>), HfError> {
    let architecture = match config.get("architectures") {
        Some(Value::Array(a)) if a.len() == 1 => a[0].as_str().unwrap_or_default().to_string(),
        other => {
            return Err(HfError::Config(format!(
                "architectures must name one architecture, not {}",
                other.map_or("nothing".into(), Value::to_string)
            )));
        }
    };
    let mut fields = Fields {
        config,
        used: BTreeSet::new(),
    };
    let dtype = fields
        .str("dtype")
        .or_else(|| fields.str("torch_dtype"))
        .unwrap_or_else(|| "float32".into());
    if !matches!(dtype.as_str(), "float32" | "bfloat16" | "float16") {
        return Err(fields.unsupported("dtype", "the weights must be float32, bfloat16 or float16"));
    }
    let model = match architecture.as_str() {
        "LlamaForCausalLM" | "MistralForCausalLM" | "Qwen2ForCausalLM" => {
            ModelConfig::Llama(llama_family(&mut fields, &architecture)?)
        }
        "GPT2LMHeadModel" => ModelConfig::Gpt2(gpt2(&mut fields)?),
        other => {
            return Err(HfError::Unsupported {
                field: "architectures".into(),
                value: format!("{other:?}"),
                why: "supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel".into(),
            });
        }
    };
    // Fields that change outputs unless at their usual values, for any architecture.
    fields.expect(
        "is_encoder_decoder",
        Value::Bool(false),
        "encoder-decoder models are not causal language models",
    )?;
    fields.expect(
        "add_cross_attention",
        Value::Bool(false),
        "cross-attention is not implemented",
    )?;
    if fields
        .get("pruned_heads")
        .is_some_and(|h| h.as_object().is_none_or(|h| !h.is_empty()))
    {
        return Err(
            fields.unsupported("pruned_heads", "pruned attention heads are not implemented")
        );
    }
    let mut ignored = Vec::new();
    for (field, value) in config {
        if fields.used.contains(field.as_str()) {
            continue;
        }
        match judge(field, value, strictness) {
            Ok(None) => {}
            Ok(Some(why)) => ignored.push(Ignored {
                field: field.clone(),
                value: value.clone(),
                why,
            }),
            Err(why) => return Err(fields.unsupported(field, &why)),
        }
    }
    model.validate().map_err(HfError::Config)?;
    Ok((model, dtype, ignored))
}

/// The config's fields, remembering which were read.
struct Fields<'a> {
    config: &'a Map<String, Value>,
    used: BTreeSet<String>,
}

impl Fields<'_> {
    fn get(&mut self, key: &str) -> Option<&Value> {
        self.used.insert(key.to_string());
        self.config.get(key).filter(|v| !v.is_null())
    }

    fn str(&mut self, key: &str) -> Option<String> {
        self.get(key).and_then(Value::as_str).map(str::to_string)
    }

    fn int(&mut self, key: &str, default: Option<i64>) -> Result<i64, HfError> {
        match self.get(key) {
            Some(v) => v
                .as_i64()
                .ok_or_else(|| HfError::Config(format!("{key} must be an integer, not {v}"))),
            None => default.ok_or_else(|| HfError::Config(format!("{key} is missing"))),
        }
    }

    fn float(&mut self, key: &str, default: f64) -> Result<f64, HfError> {
        match self.get(key) {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| HfError::Config(format!("{key} must be a number, not {v}"))),
            None => Ok(default),
        }
    }

    fn bool(&mut self, key: &str, default: bool) -> Result<bool, HfError> {
        match self.get(key) {
            Some(v) => v
                .as_bool()
                .ok_or_else(|| HfError::Config(format!("{key} must be true or false, not {v}"))),
            None => Ok(default),
        }
    }

    /// A token id, or the first of a list of them.
    fn token(&mut self, key: &str) -> Result<Option<i64>, HfError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(ids)) => Ok(ids.first().and_then(Value::as_i64)),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| HfError::Config(format!("{key} must be a token id, not {v}"))),
        }
    }

    fn unsupported(&self, field: &str, why: &str) -> HfError {
        HfError::Unsupported {
            field: field.to_string(),
            value: self
                .config
                .get(field)
                .map_or("(absent)".into(), Value::to_string),
            why: why.to_string(),
        }
    }

    /// Refuses a field unless it is absent, null or `expected`.
    fn expect(&mut self, key: &str, expected: Value, why: &str) -> Result<(), HfError> {
        match self.get(key) {
            None => Ok(()),
            Some(v) if *v == expected => Ok(()),
            Some(_) => Err(self.unsupported(key, why)),
        }
    }
}

fn llama_family(f: &mut Fields, architecture: &str) -> Result<LlamaConfig, HfError> {
    let qwen2 = architecture == "Qwen2ForCausalLM";
    let mistral = architecture == "MistralForCausalLM";
    let hidden_size = f.int("hidden_size", None)?;
    let heads = f.int("num_attention_heads", None)?;
    let default_context = if qwen2 || mistral { 32_768 } else { 2048 };
    let mut max_position_embeddings = f.int("max_position_embeddings", Some(default_context))?;
    if f.str("hidden_act").is_some_and(|a| a != "silu") {
        return Err(f.unsupported("hidden_act", "only silu (SwiGLU) is implemented"));
    }
    if let Some(head_dim) = f.get("head_dim").and_then(Value::as_i64)
        && head_dim * heads != hidden_size
    {
        return Err(f.unsupported(
            "head_dim",
            "head_dim × num_attention_heads must equal hidden_size",
        ));
    }
    f.expect(
        "mlp_bias",
        Value::Bool(false),
        "MLP biases are not implemented",
    )?;
    f.expect(
        "pretraining_tp",
        Value::from(1),
        "only pretraining_tp = 1 is implemented",
    )?;
    let attention_bias = if qwen2 {
        true // Qwen2 always has q, k and v biases, and none on o_proj.
    } else {
        // Llama's attention_bias adds an o_proj bias too, which the engine does not have.
        f.expect(
            "attention_bias",
            Value::Bool(false),
            "attention biases on Llama's o_proj are not implemented",
        )?;
        false
    };
    // Sliding-window attention equals full attention over windows no longer than the
    // window: a Mistral model's context is capped there. Qwen2 uses its window only when
    // told to; Llama has none (transformers ignores the fields).
    let window = f.get("sliding_window").and_then(Value::as_i64);
    let use_window = f.bool("use_sliding_window", false)?;
    if qwen2 && use_window {
        return Err(f.unsupported(
            "use_sliding_window",
            "sliding-window attention is not implemented",
        ));
    }
    if mistral && let Some(window) = window {
        max_position_embeddings = max_position_embeddings.min(window);
    }
    if let Some(Value::Array(types)) = f.get("layer_types").cloned()
        && types.iter().any(|t| t != "full_attention")
    {
        return Err(f.unsupported("layer_types", "only full_attention layers are implemented"));
    }
    let (rope_theta, rope_scaling) = rope(f)?;
    let eos = f.token("eos_token_id")?;
    let bos = f.token("bos_token_id")?.or(eos);
    Ok(LlamaConfig {
        architectures: vec![architecture.to_string()],
        vocab_size: f.int("vocab_size", None)?,
        hidden_size,
        intermediate_size: f.int("intermediate_size", None)?,
        num_hidden_layers: f.int("num_hidden_layers", None)?,
        num_attention_heads: heads,
        num_key_value_heads: f.int("num_key_value_heads", Some(heads))?,
        max_position_embeddings,
        rms_norm_eps: f.float("rms_norm_eps", 1e-6)?,
        rope_theta,
        rope_scaling,
        tie_word_embeddings: f.bool("tie_word_embeddings", false)?,
        attention_bias,
        bos_token_id: bos.unwrap_or(0),
        eos_token_id: eos.or(bos).unwrap_or(0),
        torch_dtype: "float32".into(),
    })
}

/// `rope_theta` and `rope_scaling` (transformers 4), or `rope_parameters` (transformers 5).
fn rope(f: &mut Fields) -> Result<(f64, Option<RopeScaling>), HfError> {
    let theta = f.float("rope_theta", 10_000.0)?;
    let (field, params) = match (
        f.get("rope_parameters").cloned(),
        f.get("rope_scaling").cloned(),
    ) {
        (Some(p), _) => ("rope_parameters", p),
        (None, Some(s)) => ("rope_scaling", s),
        (None, None) => return Ok((theta, None)),
    };
    let Value::Object(mut params) = params else {
        return Err(f.unsupported(field, "must be an object"));
    };
    let theta = match params.remove("rope_theta") {
        Some(t) => t
            .as_f64()
            .ok_or_else(|| f.unsupported(field, "rope_theta must be a number"))?,
        None => theta,
    };
    let kind = params
        .remove("rope_type")
        .or_else(|| params.remove("type"))
        .and_then(|t| t.as_str().map(str::to_string))
        .unwrap_or_else(|| "default".into());
    params
        .remove("partial_rotary_factor")
        .filter(|v| v != 1.0)
        .map_or(Ok(()), |_| {
            Err(f.unsupported(field, "partial rotary embeddings are not implemented"))
        })?;
    let scaling =
        match kind.as_str() {
            "default" if params.is_empty() => None,
            "linear" | "llama3" => {
                params.insert("rope_type".into(), Value::String(kind.clone()));
                Some(serde_json::from_value(Value::Object(params)).map_err(|e| {
                    f.unsupported(field, &format!("not a plain {kind} scaling: {e}"))
                })?)
            }
            _ => {
                return Err(f.unsupported(
                    field,
                    "only default, linear and llama3 rotary scaling are implemented",
                ));
            }
        };
    Ok((theta, scaling))
}

fn gpt2(f: &mut Fields) -> Result<Gpt2Config, HfError> {
    if f.str("activation_function")
        .is_some_and(|a| a != "gelu_new")
    {
        return Err(f.unsupported("activation_function", "only gelu_new is implemented"));
    }
    f.expect(
        "scale_attn_weights",
        Value::Bool(true),
        "unscaled attention is not implemented",
    )?;
    f.expect(
        "scale_attn_by_inverse_layer_idx",
        Value::Bool(false),
        "not implemented",
    )?;
    f.expect(
        "tie_word_embeddings",
        Value::Bool(true),
        "GPT-2 here always ties its embeddings",
    )?;
    // Upcasting attention to fp32 changes nothing for the fp32 forward pass used here.
    f.get("reorder_and_upcast_attn");
    let n_positions = f.int("n_positions", Some(1024))?;
    if f.get("n_ctx")
        .and_then(Value::as_i64)
        .is_some_and(|n| n != n_positions)
    {
        return Err(f.unsupported("n_ctx", "must equal n_positions"));
    }
    let eos = f.token("eos_token_id")?;
    let bos = f.token("bos_token_id")?.or(eos);
    Ok(Gpt2Config {
        architectures: vec!["GPT2LMHeadModel".into()],
        vocab_size: f.int("vocab_size", None)?,
        n_embd: f.int("n_embd", None)?,
        n_layer: f.int("n_layer", None)?,
        n_head: f.int("n_head", None)?,
        n_positions,
        n_inner: f.get("n_inner").and_then(Value::as_i64),
        layer_norm_epsilon: f.float("layer_norm_epsilon", 1e-5)?,
        bos_token_id: bos.unwrap_or(0),
        eos_token_id: eos.or(bos).unwrap_or(0),
        torch_dtype: "float32".into(),
    })
}

/// The checkpoint's tensors by the engine's names (GPT-2's old unprefixed names and buffers
/// that are not parameters are mapped or dropped).
fn read_weights(dir: &Path, model: &ModelConfig) -> Result<BTreeMap<String, Tensor>, HfError> {
    let files: Vec<PathBuf> = if dir.join(WEIGHTS_FILE).exists() {
        vec![dir.join(WEIGHTS_FILE)]
    } else if dir.join(INDEX_FILE).exists() {
        let path = dir.join(INDEX_FILE);
        let index: Value = serde_json::from_slice(&std::fs::read(&path).map_err(io(&path))?)
            .map_err(|e| HfError::Weights {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        let shards: BTreeSet<&str> = index["weight_map"]
            .as_object()
            .ok_or_else(|| HfError::Weights {
                path: path.display().to_string(),
                message: "no weight_map".into(),
            })?
            .values()
            .filter_map(Value::as_str)
            .collect();
        shards.into_iter().map(|s| dir.join(s)).collect()
    } else {
        return Err(HfError::Missing(
            dir.join(WEIGHTS_FILE).display().to_string(),
        ));
    };
    let mut tensors = BTreeMap::new();
    for path in files {
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let weights_error = |message: String| HfError::Weights {
            path: path.display().to_string(),
            message,
        };
        let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
            weights_error(format!(
                "not a complete safetensors file (truncated or corrupt): {e}"
            ))
        })?;
        for (name, view) in file.tensors() {
            let kind = match view.dtype() {
                safetensors::Dtype::F32 => Kind::Float,
                safetensors::Dtype::BF16 => Kind::BFloat16,
                safetensors::Dtype::F16 => Kind::Half,
                other => {
                    return Err(weights_error(format!(
                        "{name} is {other:?}: use float32, bfloat16 or float16"
                    )));
                }
            };
            let Some(name) = engine_name(model, &name) else {
                continue;
            };
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let tensor = Tensor::f_from_data_size(view.data(), &shape, kind)
                .map_err(|e| weights_error(e.to_string()))?
                .to_kind(Kind::Float);
            tensors.insert(name, tensor);
        }
    }
    Ok(tensors)
}

/// The engine's name for a checkpoint tensor; `None` for buffers that are not parameters.
fn engine_name(model: &ModelConfig, name: &str) -> Option<String> {
    match model {
        ModelConfig::Llama(_) => (!name.ends_with("rotary_emb.inv_freq")).then(|| name.to_string()),
        ModelConfig::Gpt2(_) => {
            if name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") {
                return None;
            }
            if name == "lm_head.weight" || name.starts_with("transformer.") {
                Some(name.to_string())
            } else {
                Some(format!("transformer.{name}"))
            }
        }
    }
}

/// Imports the Hugging Face directory `src` into the engine model directory `out` (created;
/// nothing is left there when the import is refused).
pub fn import(src: &Path, out: &Path, strictness: Strictness) -> Result<Imported, HfError> {
    super::checkpoint::fresh_dir(out, |out| import_into(src, out, strictness))
}

fn import_into(src: &Path, out: &Path, strictness: Strictness) -> Result<Imported, HfError> {
    let config_path = src.join(CONFIG_FILE);
    if !config_path.exists() {
        return Err(HfError::Missing(config_path.display().to_string()));
    }
    if !src.join(TOKENIZER_FILE).exists() {
        return Err(HfError::Missing(
            src.join(TOKENIZER_FILE).display().to_string(),
        ));
    }
    let text = std::fs::read(&config_path).map_err(io(&config_path))?;
    let hf: Map<String, Value> = serde_json::from_slice(&text)
        .map_err(|e| HfError::Config(format!("not a JSON object: {e}")))?;
    let (config, dtype, ignored) = hf_to_engine(&hf, strictness)?;
    let tokenizer = load_tokenizer(src, &config)?;

    let mut checkpoint = read_weights(src, &config)?;
    let vs = VarStore::new(Device::Cpu);
    let model = Model::new(&vs.root(), &config);
    let tied_head = match &config {
        ModelConfig::Llama(c) => c.tie_word_embeddings,
        ModelConfig::Gpt2(_) => true,
    };
    if tied_head && let Some(head) = checkpoint.remove("lm_head.weight") {
        // Some checkpoints store the tied head as well: it must be the embedding.
        let embedding = match &config {
            ModelConfig::Llama(_) => "model.embed_tokens.weight",
            ModelConfig::Gpt2(_) => "transformer.wte.weight",
        };
        if checkpoint.get(embedding).is_none_or(|e| !e.equal(&head)) {
            return Err(HfError::Weights {
                path: src.display().to_string(),
                message: format!(
                    "lm_head.weight differs from {embedding}, but config.json ties them"
                ),
            });
        }
    }
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let weights_path = src.display().to_string();
    for (name, mut variable) in variables {
        let tensor = checkpoint.remove(&name).ok_or_else(|| HfError::Weights {
            path: weights_path.clone(),
            message: format!("tensor {name} is missing"),
        })?;
        if tensor.size() != variable.size() {
            return Err(HfError::Weights {
                path: weights_path.clone(),
                message: format!(
                    "tensor {name} has shape {:?}; config.json implies {:?}",
                    tensor.size(),
                    variable.size()
                ),
            });
        }
        tch::no_grad(|| variable.copy_(&tensor));
    }
    if let Some(name) = checkpoint.keys().next() {
        return Err(HfError::Weights {
            path: weights_path,
            message: format!(
                "tensor {name} is not part of a {} model as config.json describes it",
                config_architecture(&config)
            ),
        });
    }
    let loaded = LoadedModel {
        config: config.clone(),
        vs,
        model,
        tokenizer,
        side_files: Vec::new(),
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut side: Vec<PathBuf> = SIDE_FILES
        .iter()
        .filter(|f| **f != HF_CONFIG_FILE)
        .map(|f| src.join(f))
        .filter(|p| p.exists())
        .collect();
    // The checkpoint's config, verbatim, for export.
    let kept = out.join(HF_CONFIG_FILE);
    std::fs::write(&kept, &text).map_err(io(&kept))?;
    side.push(kept);
    copy_side_files(&side, out)?;
    loaded.save(out)?;
    Ok(Imported {
        architecture: config_architecture(&config),
        dtype,
        parameters: loaded.parameters(),
        vocab_size: config.vocab_size(),
        context_length: config.context_length(),
        ignored,
    })
}

fn config_architecture(config: &ModelConfig) -> String {
    match config {
        ModelConfig::Llama(c) => c.architectures.first().cloned().unwrap_or_default(),
        ModelConfig::Gpt2(_) => "GPT2LMHeadModel".into(),
    }
}

/// Writes the engine model directory `model_dir` as a Hugging Face directory: the imported
/// checkpoint's config (or the engine's, which `transformers` reads for the presets), the
/// weights in that config's dtype under the checkpoint's names, the tokenizer files.
pub fn export(model_dir: &Path, out: &Path) -> Result<(), HfError> {
    let config = read_config(model_dir)?;
    let hf_path = model_dir.join(HF_CONFIG_FILE);
    let hf_config: Map<String, Value> = if hf_path.exists() {
        serde_json::from_slice(&std::fs::read(&hf_path).map_err(io(&hf_path))?)
            .map_err(|e| HfError::Config(format!("{HF_CONFIG_FILE}: {e}")))?
    } else {
        match serde_json::to_value(&config).expect("configs serialise") {
            Value::Object(map) => map,
            _ => unreachable!("a config is an object"),
        }
    };
    let dtype = hf_config
        .get("dtype")
        .or_else(|| hf_config.get("torch_dtype"))
        .and_then(Value::as_str)
        .unwrap_or("float32");
    let kind = match dtype {
        "bfloat16" => Kind::BFloat16,
        "float16" => Kind::Half,
        _ => Kind::Float,
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let path = out.join(CONFIG_FILE);
    if hf_path.exists() {
        // The imported checkpoint's config, byte for byte.
        std::fs::copy(&hf_path, &path).map_err(io(&path))?;
    } else {
        let text = serde_json::to_string_pretty(&hf_config).expect("configs serialise");
        std::fs::write(&path, text + "\n").map_err(io(&path))?;
    }
    let model = LoadedModel::load(model_dir, Device::Cpu)?;
    let mut tensors: Vec<(String, Tensor)> = model
        .vs
        .variables()
        .into_iter()
        .map(|(name, t)| (name, t.to_kind(kind)))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let weights = out.join(WEIGHTS_FILE);
    let partial = out.join("model.partial.safetensors");
    let raw: Vec<(String, Bytes)> = tensors
        .iter()
        .map(|(name, t)| (name.clone(), bytes_of(t)))
        .collect();
    // transformers requires the `format` entry.
    let metadata = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    safetensors::serialize_to_file(
        raw.iter().map(|(n, r)| (n.as_str(), r)),
        &metadata,
        &partial,
    )
    .map_err(|e| HfError::Weights {
        path: partial.display().to_string(),
        message: e.to_string(),
    })?;
    std::fs::rename(&partial, &weights).map_err(io(&weights))?;
    let side: Vec<PathBuf> = model
        .side_files
        .into_iter()
        .filter(|p| !p.ends_with(HF_CONFIG_FILE))
        .collect();
    copy_side_files(&side, out)?;
    Ok(())
}

/// A tensor's bytes in its own dtype (bfloat16, float16, else float32).
fn bytes_of(t: &Tensor) -> Bytes {
    let t = t.contiguous();
    let dtype = match t.kind() {
        Kind::BFloat16 => safetensors::Dtype::BF16,
        Kind::Half => safetensors::Dtype::F16,
        _ => safetensors::Dtype::F32,
    };
    let numel = t.numel();
    let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut data, numel);
    Bytes {
        dtype,
        shape: t.size().iter().map(|&d| d as usize).collect(),
        data,
    }
}
