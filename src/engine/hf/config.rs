//! A checkpoint's `config.json` read into the engine's config: every field understood,
//! known not to change the model's outputs, or refused by name.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::fields::judge;
use super::{HfError, Ignored, Strictness};
use crate::engine::model::{Gpt2Config, LlamaConfig, ModelConfig, llama::RopeScaling};

/// Reads a config.json the way `transformers` means it.
pub(super) fn hf_to_engine(
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

pub(super) fn config_architecture(config: &ModelConfig) -> String {
    match config {
        ModelConfig::Llama(c) => c.architectures.first().cloned().unwrap_or_default(),
        ModelConfig::Gpt2(_) => "GPT2LMHeadModel".into(),
    }
}
