//! A Hugging Face directory imported as an engine model directory.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tch::{Device, Tensor, nn::VarStore};

use super::config::{config_architecture, hf_to_engine};
use super::weights::read_weights;
use super::{HfError, Imported, Strictness, io};
use crate::engine::checkpoint::{
    CONFIG_FILE, HF_CONFIG_FILE, LoadedModel, SIDE_FILES, TOKENIZER_FILE, copy_side_files,
    load_tokenizer,
};
use crate::engine::model::{Model, ModelConfig};

/// Imports the Hugging Face directory `src` into the engine model directory `out` (created;
/// nothing is left there when the import is refused).
pub fn import(src: &Path, out: &Path, strictness: Strictness) -> Result<Imported, HfError> {
    crate::engine::checkpoint::fresh_dir(out, |out| import_into(src, out, strictness))
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
