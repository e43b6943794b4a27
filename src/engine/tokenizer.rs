//! Text to token ids: a byte-level tokenizer for the built-in presets, and Hugging Face
//! `tokenizer.json` files through the `tokenizers` crate.

use std::path::Path;

/// The byte tokenizer's vocabulary: the 256 byte values, then the end-of-document token.
pub const BYTE_VOCAB: i64 = 257;
pub const BYTE_EOS: i64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot load tokenizer {path}: {message}")]
    Load { path: String, message: String },
    #[error("tokenizer failed on a document: {0}")]
    Encode(String),
}

pub enum Tokenizer {
    Bytes,
    HuggingFace {
        inner: Box<tokenizers::Tokenizer>,
        bos: u32,
        eos: u32,
    },
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`; `bos` and `eos` are the model's start and
    /// end-of-document ids (`bos_token_id`, `eos_token_id` in its config.json).
    pub fn from_file(path: &Path, bos: u32, eos: u32) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::Load {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(Tokenizer::HuggingFace {
            inner: Box::new(inner),
            bos,
            eos,
        })
    }

    /// Token ids of one document, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        match self {
            Tokenizer::Bytes => Ok(text.bytes().map(u32::from).collect()),
            Tokenizer::HuggingFace { inner, .. } => inner
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| TokenizerError::Encode(e.to_string())),
        }
    }

    /// The token that ends a document in training data.
    pub fn eos(&self) -> u32 {
        match self {
            Tokenizer::Bytes => BYTE_EOS as u32,
            Tokenizer::HuggingFace { eos, .. } => *eos,
        }
    }

    /// The token a document starts with, as the model saw in pre-training: its BOS (for the
    /// byte tokenizer and GPT-2 the same token as EOS). Evaluation conditions a document's
    /// first token on it; training data puts it before each document when it differs from
    /// EOS.
    pub fn bos(&self) -> u32 {
        match self {
            Tokenizer::Bytes => BYTE_EOS as u32,
            Tokenizer::HuggingFace { bos, .. } => *bos,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Bytes => BYTE_VOCAB as usize,
            Tokenizer::HuggingFace { inner, .. } => inner.get_vocab_size(true),
        }
    }
}
