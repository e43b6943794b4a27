//! An engine model directory written as a Hugging Face directory.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tch::{Device, Kind, Tensor};

use super::weights::bytes_of;
use super::{HfError, io};
use crate::engine::checkpoint::{
    CONFIG_FILE, HF_CONFIG_FILE, LoadedModel, WEIGHTS_FILE, copy_side_files, read_config,
};
use crate::engine::merge::Bytes;

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
