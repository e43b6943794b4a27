//! A checkpoint's weights (one file or shards) read under the engine's parameter names, and
//! tensors written back in their own dtype.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use tch::{Kind, Tensor};

use super::{HfError, INDEX_FILE, io};
use crate::engine::checkpoint::WEIGHTS_FILE;
use crate::engine::merge::Bytes;
use crate::engine::model::ModelConfig;

/// The checkpoint's tensors by the engine's names (GPT-2's old unprefixed names and buffers
/// that are not parameters are mapped or dropped).
pub(super) fn read_weights(
    dir: &Path,
    model: &ModelConfig,
) -> Result<BTreeMap<String, Tensor>, HfError> {
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

/// A tensor's bytes in its own dtype (bfloat16, float16, else float32).
pub(super) fn bytes_of(t: &Tensor) -> Bytes {
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
