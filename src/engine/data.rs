//! Training and evaluation text: readers for JSONL and plain text (optionally gzip or zstd),
//! tokenisation into one stream with an end-of-document token between documents, and
//! deterministic packing of that stream into shuffled training sequences.

use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use super::tokenizer::{Tokenizer, TokenizerError};

/// One document: its text and, for evaluation sets, the domain it reports under.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub text: String,
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line with a `text` string and an optional `domain` string.
    Jsonl,
    /// The whole text is one document.
    Text,
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot decompress {codec} data: {message}")]
    Decompress {
        codec: &'static str,
        message: String,
    },
    #[error("line {line}: not valid UTF-8")]
    NotUtf8 { line: usize },
    #[error("line {line}: not a JSON object: {message}")]
    NotJson { line: usize, message: String },
    #[error("line {line}: no \"text\" string field")]
    NoText { line: usize },
    #[error("line {line}: \"domain\" must be a string")]
    BadDomain { line: usize },
    #[error("no documents: the data is empty")]
    Empty,
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// Reads a file: decompresses gzip or zstd (by magic bytes), picks the format from the name
/// (`.jsonl`/`.json` before any compression suffix, else `.txt`), or from the content.
pub fn read_documents(path: &Path) -> Result<Vec<Document>, DataError> {
    let io = |source| DataError::Io {
        path: path.display().to_string(),
        source,
    };
    let raw = std::fs::read(path).map_err(io)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name = name.trim_end_matches(".gz").trim_end_matches(".zst");
    let format = if name.ends_with(".jsonl") || name.ends_with(".json") {
        Some(Format::Jsonl)
    } else if name.ends_with(".txt") {
        Some(Format::Text)
    } else {
        None
    };
    parse_documents(&decompress(raw)?, format)
}

/// Undoes gzip or zstd compression, recognised by magic bytes; other data passes unchanged.
pub fn decompress(raw: Vec<u8>) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::new();
    if raw.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| DataError::Decompress {
                codec: "gzip",
                message: e.to_string(),
            })?;
    } else if raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::read::Decoder::new(raw.as_slice())
            .and_then(|mut d| d.read_to_end(&mut out))
            .map_err(|e| DataError::Decompress {
                codec: "zstd",
                message: e.to_string(),
            })?;
    } else {
        return Ok(raw);
    }
    Ok(out)
}

/// Parses decompressed bytes. Without a format, data whose first non-blank byte is `{` is
/// JSONL. Blank lines and blank texts are skipped; data without any text is an error.
pub fn parse_documents(bytes: &[u8], format: Option<Format>) -> Result<Vec<Document>, DataError> {
    let text = std::str::from_utf8(bytes).map_err(|e| DataError::NotUtf8 {
        line: 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
    })?;
    let format = format.unwrap_or_else(|| match text.trim_start().starts_with('{') {
        true => Format::Jsonl,
        false => Format::Text,
    });
    let docs = match format {
        Format::Text => vec![Document {
            text: text.to_string(),
            domain: None,
        }],
        Format::Jsonl => parse_jsonl(text)?,
    };
    let docs: Vec<Document> = docs
        .into_iter()
        .filter(|d| !d.text.trim().is_empty())
        .collect();
    if docs.is_empty() {
        return Err(DataError::Empty);
    }
    Ok(docs)
}

fn parse_jsonl(text: &str) -> Result<Vec<Document>, DataError> {
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        docs.extend(parse_jsonl_line(line, i + 1)?);
    }
    Ok(docs)
}

/// One JSONL line (numbered from 1, for errors): `None` for a blank line.
pub fn parse_jsonl_line(line: &str, line_no: usize) -> Result<Option<Document>, DataError> {
    #[derive(Deserialize)]
    struct Line {
        text: Option<serde_json::Value>,
        domain: Option<serde_json::Value>,
    }
    if line.trim().is_empty() {
        return Ok(None);
    }
    let parsed: Line = serde_json::from_str(line).map_err(|e| DataError::NotJson {
        line: line_no,
        message: e.to_string(),
    })?;
    let Some(serde_json::Value::String(text)) = parsed.text else {
        return Err(DataError::NoText { line: line_no });
    };
    let domain = match parsed.domain {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(d)) => Some(d),
        Some(_) => return Err(DataError::BadDomain { line: line_no }),
    };
    Ok(Some(Document { text, domain }))
}

/// Documents as JSONL, one `{"text", "domain"}` object per line.
pub fn jsonl(docs: &[Document]) -> String {
    docs.iter()
        .map(|d| {
            format!(
                "{}\n",
                serde_json::json!({"text": d.text, "domain": d.domain})
            )
        })
        .collect()
}

/// The documents' token ids as one stream, each document followed by the EOS token (and
/// preceded by the BOS token, for models whose BOS differs from their EOS).
pub fn tokenize(docs: &[Document], tokenizer: &Tokenizer) -> Result<Vec<u32>, DataError> {
    let mut stream = Vec::new();
    let (bos, eos) = (tokenizer.bos(), tokenizer.eos());
    for doc in docs {
        if bos != eos {
            stream.push(bos);
        }
        stream.extend(tokenizer.encode(&doc.text)?);
        stream.push(eos);
    }
    Ok(stream)
}

/// Cuts a token stream into `chunks()` windows of `seq_len + 1` tokens (inputs and their
/// next-token targets) and serves them in an order that is a fixed function of the seed:
/// epoch `e` visits every window once, in a permutation drawn from `(seed, e)`. A budget
/// larger than the stream therefore cycles over it, and sequence `i` is always the same
/// window, which is what makes resumed training identical to uninterrupted training.
///
/// [`Sequences::weighted`] serves several streams in given proportions instead: sequence `i`
/// comes from the stream furthest behind its share (the largest `w_k·(i + 1) − n_k`, where
/// `n_k` sequences came from stream `k` before; ties to the first), as the `n_k`-th window of
/// that stream's own seeded order. Every prefix of the order then holds each stream's share
/// to within one sequence, and sequence `i` is still a fixed function of the inputs and `i`.
pub struct Sequences<'a> {
    streams: Vec<Stream<'a>>,
    /// Normalised; one stream: `[1.0]`.
    weights: Vec<f64>,
    /// Which stream and which of its windows each sequence is, as far as it was asked for
    /// (several streams only).
    schedule: Vec<(u32, u64)>,
    drawn: Vec<u64>,
}

struct Stream<'a> {
    tokens: &'a [u32],
    seq_len: usize,
    seed: u64,
    epoch: Option<(u64, Vec<u32>)>,
}

impl<'a> Stream<'a> {
    fn new(tokens: &'a [u32], seq_len: usize, seed: u64) -> Result<Self, String> {
        if seq_len == 0 || tokens.len() < seq_len + 1 {
            return Err(format!(
                "the data has {} tokens; training needs at least seq_len + 1 = {}",
                tokens.len(),
                seq_len + 1
            ));
        }
        Ok(Stream {
            tokens,
            seq_len,
            seed,
            epoch: None,
        })
    }

    fn chunks(&self) -> u64 {
        ((self.tokens.len() - 1) / self.seq_len) as u64
    }

    fn get(&mut self, index: u64) -> &'a [u32] {
        let chunks = self.chunks();
        let epoch = index / chunks;
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.epoch = Some((epoch, permutation(chunks as usize, mix(self.seed, epoch))));
        }
        let (_, order) = self.epoch.as_ref().unwrap();
        let start = order[(index % chunks) as usize] as usize * self.seq_len;
        &self.tokens[start..start + self.seq_len + 1]
    }
}

impl<'a> Sequences<'a> {
    /// Fails when the stream is shorter than one window.
    pub fn new(tokens: &'a [u32], seq_len: usize, seed: u64) -> Result<Self, String> {
        Ok(Sequences {
            streams: vec![Stream::new(tokens, seq_len, seed)?],
            weights: vec![1.0],
            schedule: Vec::new(),
            drawn: Vec::new(),
        })
    }

    /// Several streams, drawn from in proportion to their non-negative `weights` (normalised
    /// here). Fails when the weights are not finite, sum to zero, or a stream with weight is
    /// shorter than one window.
    pub fn weighted(
        streams: &[(&'a [u32], f64)],
        seq_len: usize,
        seed: u64,
    ) -> Result<Self, String> {
        let sum: f64 = streams.iter().map(|(_, w)| w).sum();
        if streams.iter().any(|(_, w)| !(w.is_finite() && *w >= 0.0)) || sum <= 0.0 {
            return Err("stream weights must be finite, non-negative and not all zero".into());
        }
        let mut built = Vec::with_capacity(streams.len());
        for (k, (tokens, weight)) in streams.iter().enumerate() {
            // Stream 0 keeps the seed itself, so one stream is ordered as by `new`.
            let stream_seed = seed ^ (k as u64).wrapping_mul(0xd1b5_4a32_d192_ed03);
            let stream = if *weight > 0.0 {
                Stream::new(tokens, seq_len, stream_seed).map_err(|e| format!("stream {k}: {e}"))?
            } else {
                // Never drawn from.
                Stream {
                    tokens,
                    seq_len,
                    seed: stream_seed,
                    epoch: None,
                }
            };
            built.push(stream);
        }
        Ok(Sequences {
            drawn: vec![0; built.len()],
            streams: built,
            weights: streams.iter().map(|(_, w)| w / sum).collect(),
            schedule: Vec::new(),
        })
    }

    /// Windows in one epoch of a single stream (in all streams, for several).
    pub fn chunks(&self) -> u64 {
        self.streams
            .iter()
            .zip(&self.weights)
            .filter(|(_, w)| **w > 0.0)
            .map(|(s, _)| s.chunks())
            .sum()
    }

    /// The `index`-th training window, `seq_len + 1` tokens long.
    pub fn get(&mut self, index: u64) -> &'a [u32] {
        if self.streams.len() == 1 {
            return self.streams[0].get(index);
        }
        while self.schedule.len() as u64 <= index {
            let i = self.schedule.len() as f64;
            let k = (0..self.streams.len())
                .max_by(|&a, &b| {
                    let behind = |k: usize| self.weights[k] * (i + 1.0) - self.drawn[k] as f64;
                    // Ties go to the first stream: `max_by` keeps the last of equals.
                    behind(a).total_cmp(&behind(b)).then(b.cmp(&a))
                })
                .expect("at least one stream");
            self.schedule.push((k as u32, self.drawn[k]));
            self.drawn[k] += 1;
        }
        let (k, j) = self.schedule[index as usize];
        self.streams[k as usize].get(j)
    }

    /// Which stream sequence `index` comes from.
    pub fn stream_of(&mut self, index: u64) -> usize {
        if self.streams.len() == 1 {
            return 0;
        }
        self.get(index);
        self.schedule[index as usize].0 as usize
    }
}

/// A Fisher–Yates shuffle of `0..n` driven by SplitMix64, stable across platforms and
/// library versions (unlike a general-purpose RNG crate's streams).
pub fn permutation(n: usize, seed: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut state = seed;
    for i in (1..n).rev() {
        let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

fn mix(seed: u64, epoch: u64) -> u64 {
    let mut state = seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    splitmix64(&mut state)
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
