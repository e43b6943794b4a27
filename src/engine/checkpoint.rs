//! Model directories in Hugging Face layout: `config.json`, `model.safetensors` and, for
//! models with a Hugging Face tokenizer, `tokenizer.json` (byte-level models have none).
//! A model imported from a Hugging Face checkpoint also keeps the checkpoint's own config
//! (`hf_config.json`) and tokenizer files, which travel with it through training, merging and
//! export ([`SIDE_FILES`]).

use std::path::{Path, PathBuf};

use tch::{Device, nn::VarStore};

use super::model::{Model, ModelConfig};
use super::tokenizer::{BYTE_VOCAB, Tokenizer};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// A trained unit model's diagonal Fisher estimate (AdamW's bias-corrected second moments),
/// beside its weights.
pub const FISHER_FILE: &str = "fisher.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The imported checkpoint's `config.json`, verbatim: what export writes back.
pub const HF_CONFIG_FILE: &str = "hf_config.json";
/// Files besides the config and the weights that belong to a model directory.
/// The tokenizer's files as `transformers` and `tokenizers` write them (the chat template
/// in `chat_template.jinja` since transformers 5), the generation settings, and the imported
/// config: carried unchanged through training, merging and export.
pub const SIDE_FILES: &[&str] = &[
    TOKENIZER_FILE,
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "generation_config.json",
    HF_CONFIG_FILE,
];

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: invalid model config: {message}")]
    Config { path: String, message: String },
    #[error("{path}: {message}")]
    Weights { path: String, message: String },
    #[error(transparent)]
    Tokenizer(#[from] super::tokenizer::TokenizerError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A model with its variables, on one device. `Tensor` is not `Sync`: a `LoadedModel` lives
/// on the thread that uses it.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub vs: VarStore,
    pub model: Model,
    pub tokenizer: Tokenizer,
    /// The directory's [`SIDE_FILES`] that exist, copied into every directory this model is
    /// saved to.
    pub side_files: Vec<PathBuf>,
}

impl LoadedModel {
    /// A randomly initialised byte-level model. Initial values are drawn on the CPU from
    /// `seed`, so the same seed gives the same model on every device.
    pub fn init(config: ModelConfig, seed: u64, device: Device) -> Result<Self, CheckpointError> {
        config
            .validate()
            .map_err(|message| CheckpointError::Config {
                path: "preset".into(),
                message,
            })?;
        tch::manual_seed(seed as i64);
        let cpu = VarStore::new(Device::Cpu);
        let cpu_model = Model::new(&cpu.root(), &config);
        let (vs, model) = if device == Device::Cpu {
            (cpu, cpu_model)
        } else {
            let mut vs = VarStore::new(device);
            let model = Model::new(&vs.root(), &config);
            vs.copy(&cpu).map_err(|e| CheckpointError::Weights {
                path: "init".into(),
                message: e.to_string(),
            })?;
            (vs, model)
        };
        Ok(LoadedModel {
            config,
            vs,
            model,
            tokenizer: Tokenizer::Bytes,
            side_files: Vec::new(),
        })
    }

    /// Loads a model directory onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<Self, CheckpointError> {
        let config = read_config(dir)?;
        let tokenizer = load_tokenizer(dir, &config)?;
        let mut vs = VarStore::new(device);
        let model = Model::new(&vs.root(), &config);
        let weights = dir.join(WEIGHTS_FILE);
        let refused = |message: String| CheckpointError::Weights {
            path: weights.display().to_string(),
            message,
        };
        // Tensors the model needs and the file lacks are named in a fixed order, the first
        // few of them (the variable store's own check names one, in hash order).
        if let Some(stored) = stored_tensor_names(&weights) {
            let mut missing: Vec<String> = vs
                .variables()
                .into_keys()
                .filter(|name| !stored.contains(name))
                .collect();
            missing.sort();
            if !missing.is_empty() {
                let named: Vec<String> = missing
                    .iter()
                    .take(3)
                    .map(|name| format!("cannot find the tensor named {name}"))
                    .collect();
                return Err(refused(format!(
                    "{} of the {} tensors the config needs are not in the file: {}{}",
                    missing.len(),
                    vs.variables().len(),
                    named.join("; "),
                    if missing.len() > 3 { "; …" } else { "" }
                )));
            }
        }
        vs.load(&weights).map_err(|e| refused(e.to_string()))?;
        Ok(LoadedModel {
            config,
            vs,
            model,
            tokenizer,
            side_files: side_files(dir),
        })
    }

    /// A model directory's config and tokenizer with freshly initialised weights, for a
    /// resident merge to overwrite: no weights file is read.
    pub fn skeleton(dir: &Path, device: Device) -> Result<Self, CheckpointError> {
        let config = read_config(dir)?;
        let tokenizer = load_tokenizer(dir, &config)?;
        let vs = VarStore::new(device);
        let model = Model::new(&vs.root(), &config);
        Ok(LoadedModel {
            config,
            vs,
            model,
            tokenizer,
            side_files: side_files(dir),
        })
    }

    /// Writes the directory; the weights go to a temporary name first and are renamed into
    /// place, so a crash never leaves a truncated `model.safetensors`.
    pub fn save(&self, dir: &Path) -> Result<(), CheckpointError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        write_config(dir, &self.config)?;
        copy_side_files(&self.side_files, dir)?;
        let weights = dir.join(WEIGHTS_FILE);
        let partial = dir.join("model.partial.safetensors");
        self.vs
            .save(&partial)
            .map_err(|e| CheckpointError::Weights {
                path: partial.display().to_string(),
                message: e.to_string(),
            })?;
        std::fs::rename(&partial, &weights).map_err(io_error(&weights))
    }

    pub fn parameters(&self) -> i64 {
        self.vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }
}

/// The tokenizer of a model directory: its `tokenizer.json`, or bytes for a byte-level
/// vocabulary.
pub fn load_tokenizer(dir: &Path, config: &ModelConfig) -> Result<Tokenizer, CheckpointError> {
    let path = dir.join(TOKENIZER_FILE);
    if path.exists() {
        let tokenizer =
            Tokenizer::from_file(&path, config.bos_token_id(), config.eos_token_id() as u32)?;
        if tokenizer.vocab_size() as i64 > config.vocab_size() {
            return Err(CheckpointError::Config {
                path: path.display().to_string(),
                message: format!(
                    "the tokenizer has {} tokens, more than the model's vocab_size {}",
                    tokenizer.vocab_size(),
                    config.vocab_size()
                ),
            });
        }
        Ok(tokenizer)
    } else if config.vocab_size() == BYTE_VOCAB {
        Ok(Tokenizer::Bytes)
    } else {
        Err(CheckpointError::Config {
            path: dir.display().to_string(),
            message: format!("no {TOKENIZER_FILE}, and the vocabulary is not bytes"),
        })
    }
}

/// The [`SIDE_FILES`] present in `dir`.
pub fn side_files(dir: &Path) -> Vec<PathBuf> {
    SIDE_FILES
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.exists())
        .collect()
}

/// Runs `write` to fill the folder `out`; when it fails and `out` did not exist before, the
/// folder is removed again, so that a refused import or merge leaves no output behind.
pub fn fresh_dir<T, E: From<CheckpointError>>(
    out: &Path,
    write: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, E> {
    let existed = out.exists();
    let result = write(out);
    if result.is_err() && !existed {
        let _ = std::fs::remove_dir_all(out);
    }
    result
}

/// Copies side files into `dir` (each under its own name).
pub fn copy_side_files(files: &[PathBuf], dir: &Path) -> Result<(), CheckpointError> {
    for src in files {
        let dst = dir.join(src.file_name().expect("side files are files"));
        if src != &dst {
            std::fs::copy(src, &dst).map_err(io_error(&dst))?;
        }
    }
    Ok(())
}

pub fn read_config(dir: &Path) -> Result<ModelConfig, CheckpointError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
    let config: ModelConfig = serde_json::from_str(&text).map_err(|e| CheckpointError::Config {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    config
        .validate()
        .map_err(|message| CheckpointError::Config {
            path: path.display().to_string(),
            message,
        })?;
    Ok(config)
}

pub fn write_config(dir: &Path, config: &ModelConfig) -> Result<(), CheckpointError> {
    let path = dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(config).expect("configs serialise");
    std::fs::write(&path, text + "\n").map_err(io_error(&path))
}

/// The tensor names in a safetensors file's header, or `None` when the header cannot be read
/// (the load that follows then says why).
fn stored_tensor_names(path: &Path) -> Option<std::collections::HashSet<String>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut size = [0u8; 8];
    file.read_exact(&mut size).ok()?;
    let size = u64::from_le_bytes(size);
    if size > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; size as usize];
    file.read_exact(&mut header).ok()?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).ok()?;
    Some(
        header
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| name != "__metadata__")
            .collect(),
    )
}
