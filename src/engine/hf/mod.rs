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

mod config;
mod export;
mod fields;
mod import;
mod weights;

use std::path::Path;

use serde_json::Value;

pub use export::export;
pub use import::import;

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
