//! Perplexity, following lm-evaluation-harness and Paloma: each document is tokenised and
//! cut into non-overlapping windows of the context length, the first token conditioned on
//! the document-start token (BOS; EOS for byte-level models); NLL, predicted tokens and UTF-8 bytes are summed per domain.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use super::checkpoint::LoadedModel;
use super::data::{DataError, Document};

/// Documents without a `domain` report under this name.
pub const DEFAULT_DOMAIN: &str = "default";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Windows per forward pass.
    pub batch_size: usize,
    /// Window length; defaults to the model's context length.
    pub context: Option<usize>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            batch_size: 16,
            context: None,
        }
    }
}

/// Sums and the figures derived from them, for the whole set or one domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub nll: f64,
    pub tokens: u64,
    pub bytes: u64,
    pub documents: u64,
    /// exp(Σ NLL / Σ tokens).
    pub perplexity: f64,
    pub mean_nll: f64,
    /// Σ NLL / (ln 2 · Σ UTF-8 bytes).
    pub bits_per_byte: f64,
}

impl Totals {
    /// The totals of a perplexity given outright over these tokens: the NLL it implies.
    pub fn of_perplexity(perplexity: f64, tokens: u64, bytes: u64, documents: u64) -> Self {
        let mean_nll = perplexity.ln();
        let nll = mean_nll * tokens as f64;
        Totals {
            nll,
            tokens,
            bytes,
            documents,
            perplexity,
            mean_nll,
            bits_per_byte: nll / (std::f64::consts::LN_2 * bytes as f64),
        }
    }

    fn new(nll: f64, tokens: u64, bytes: u64, documents: u64) -> Self {
        let mean_nll = nll / tokens as f64;
        Totals {
            nll,
            tokens,
            bytes,
            documents,
            perplexity: mean_nll.exp(),
            mean_nll,
            bits_per_byte: nll / (std::f64::consts::LN_2 * bytes as f64),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    #[serde(flatten)]
    pub total: Totals,
    pub per_domain: BTreeMap<String, Totals>,
    /// Unweighted means over domains, so a large domain does not drown the small ones.
    pub macro_perplexity: f64,
    pub macro_bits_per_byte: f64,
}

struct Window {
    /// Input ids; the targets are the same ids shifted by one (`len` + 1 ids in all).
    ids: Vec<i64>,
}

/// Where the predicted tokens of a prepared eval set belong: each window's domain and
/// length, in evaluation order, and each domain's UTF-8 bytes and documents. Totals are
/// summed from per-token NLLs in this order only ([`Layout::totals`]), so a model's
/// evaluation and any arithmetic on its stored per-token NLLs give the same numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Layout {
    pub domains: Vec<String>,
    /// (UTF-8 bytes, documents) per domain.
    pub sizes: Vec<(u64, u64)>,
    /// (domain, predicted tokens) per window.
    pub windows: Vec<(u32, u32)>,
}

impl Layout {
    /// Predicted tokens in all windows.
    pub fn tokens(&self) -> usize {
        self.windows.iter().map(|&(_, n)| n as usize).sum()
    }

    /// The totals of per-token NLLs, `nll(i)` for the i-th predicted token in window order:
    /// each window summed in f64 in token order, then the windows in order per domain.
    pub fn totals(&self, nll: impl Fn(usize) -> f64) -> EvalResult {
        let mut sums: Vec<(f64, u64)> = vec![(0.0, 0); self.domains.len()];
        let mut at = 0usize;
        for &(domain, len) in &self.windows {
            let window: f64 = (at..at + len as usize).map(&nll).sum();
            at += len as usize;
            sums[domain as usize].0 += window;
            sums[domain as usize].1 += len as u64;
        }
        let per_domain: BTreeMap<String, Totals> = self
            .domains
            .iter()
            .zip(sums.iter().zip(&self.sizes))
            .map(|(name, (&(nll, tokens), &(bytes, docs)))| {
                (name.clone(), Totals::new(nll, tokens, bytes, docs))
            })
            .collect();
        let total = Totals::new(
            sums.iter().map(|s| s.0).sum(),
            sums.iter().map(|s| s.1).sum(),
            self.sizes.iter().map(|s| s.0).sum(),
            self.sizes.iter().map(|s| s.1).sum(),
        );
        let n = per_domain.len() as f64;
        EvalResult {
            total,
            macro_perplexity: per_domain.values().map(|t| t.perplexity).sum::<f64>() / n,
            macro_bits_per_byte: per_domain.values().map(|t| t.bits_per_byte).sum::<f64>() / n,
            per_domain,
        }
    }
}

/// An eval set tokenised and cut into windows for one model's tokenizer and context: made
/// once, evaluated with any weights of that architecture (every merge of a sweep).
pub struct Prepared {
    layout: Layout,
    /// Longest first, so each batch pads little and the order does not depend on the input's.
    windows: Vec<Window>,
}

impl Prepared {
    /// Tokenises `docs` for `model`. Errors only on tokenisation failure or an empty set.
    pub fn new(
        model: &LoadedModel,
        docs: &[Document],
        config: &EvalConfig,
    ) -> Result<Prepared, DataError> {
        let context = config
            .context
            .unwrap_or(model.config.context_length() as usize)
            .max(1);
        let context = context.min(model.config.context_length() as usize);
        let mut domains: Vec<String> = Vec::new();
        let mut sizes: Vec<(u64, u64)> = Vec::new();
        let mut windows = Vec::new();
        for doc in docs {
            let name = doc.domain.as_deref().unwrap_or(DEFAULT_DOMAIN);
            let domain = domains.iter().position(|d| d == name).unwrap_or_else(|| {
                domains.push(name.to_string());
                sizes.push((0, 0));
                domains.len() - 1
            });
            let mut ids = vec![model.tokenizer.bos() as i64];
            ids.extend(
                model
                    .tokenizer
                    .encode(&doc.text)?
                    .into_iter()
                    .map(i64::from),
            );
            sizes[domain].0 += doc.text.len() as u64;
            sizes[domain].1 += 1;
            let predicted = ids.len() - 1;
            for start in (0..predicted).step_by(context) {
                let len = context.min(predicted - start);
                windows.push((
                    domain as u32,
                    Window {
                        ids: ids[start..start + len + 1].to_vec(),
                    },
                ));
            }
        }
        if windows.is_empty() {
            return Err(DataError::Empty);
        }
        windows.sort_by_key(|(_, w): &(u32, Window)| std::cmp::Reverse(w.ids.len()));
        let layout = Layout {
            domains,
            sizes,
            windows: windows
                .iter()
                .map(|(domain, w)| (*domain, (w.ids.len() - 1) as u32))
                .collect(),
        };
        Ok(Prepared {
            layout,
            windows: windows.into_iter().map(|(_, w)| w).collect(),
        })
    }

    /// Predicted tokens in all windows.
    pub fn tokens(&self) -> u64 {
        self.layout.tokens() as u64
    }

    /// Where each predicted token belongs.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The model's NLL of each predicted token (fp32 cross-entropy), in the layout's order,
    /// `batch_size` windows per forward pass.
    pub fn token_nll(&self, model: &LoadedModel, batch_size: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.layout.tokens());
        let device = model.vs.device();
        tch::no_grad(|| {
            for batch in self.windows.chunks(batch_size.max(1)) {
                let nll = position_nll(model, &ids_of(batch), device).to_device(Device::Cpu);
                let width = nll.size()[1] as usize;
                let nll = Vec::<f32>::try_from(&nll.view([-1])).expect("a float tensor");
                for (row, w) in batch.iter().enumerate() {
                    out.extend_from_slice(&nll[row * width..row * width + w.ids.len() - 1]);
                }
            }
        });
        out
    }

    /// The model's perplexity on the prepared windows, `batch_size` windows per forward pass.
    pub fn evaluate(&self, model: &LoadedModel, batch_size: usize) -> EvalResult {
        let nll = self.token_nll(model, batch_size);
        self.layout.totals(|i| nll[i] as f64)
    }
}

/// Evaluates `model` on `docs`. Errors only on tokenisation failure or an empty set.
pub fn evaluate(
    model: &LoadedModel,
    docs: &[Document],
    config: &EvalConfig,
) -> Result<EvalResult, DataError> {
    Ok(Prepared::new(model, docs, config)?.evaluate(model, config.batch_size))
}

impl Prepared {
    /// The mean NLL per predicted token over the windows, with its gradient with respect to
    /// the model's parameters accumulated into their `grad` (one backward pass per batch).
    /// Returns the mean NLL.
    pub fn mean_nll_backward(&self, model: &LoadedModel, batch_size: usize) -> f64 {
        let device = model.vs.device();
        let tokens = self.tokens() as f64;
        let mut mean = 0.0;
        for batch in self.windows.chunks(batch_size.max(1)) {
            let loss = window_nll(model, batch, device).sum(Kind::Double) / tokens;
            loss.backward();
            mean += loss.double_value(&[]);
        }
        mean
    }
}

/// Each window's summed NLL as a double tensor on the device (differentiable when grad is
/// enabled).
fn window_nll(model: &LoadedModel, batch: &[Window], device: Device) -> Tensor {
    position_nll(model, &ids_of(batch), device).sum_dim_intlist(-1, false, Kind::Double)
}

fn ids_of(batch: &[Window]) -> Vec<&[i64]> {
    batch.iter().map(|w| w.ids.as_slice()).collect()
}

/// The fp32 cross-entropy of every target position of each sequence of ids (each predicts
/// its ids after the first), `[sequences, longest − 1]`, zero at padding.
pub(super) fn position_nll(model: &LoadedModel, batch: &[&[i64]], device: Device) -> Tensor {
    const PAD: i64 = -100;
    let width = batch.iter().map(|ids| ids.len() - 1).max().unwrap();
    let mut inputs = vec![0i64; batch.len() * width];
    let mut targets = vec![PAD; batch.len() * width];
    for (row, ids) in batch.iter().enumerate() {
        let n = ids.len() - 1;
        let at = row * width;
        inputs[at..at + n].copy_from_slice(&ids[..n]);
        targets[at..at + n].copy_from_slice(&ids[1..]);
    }
    let shape = [batch.len() as i64, width as i64];
    let inputs = Tensor::from_slice(&inputs).view(shape).to_device(device);
    let targets = Tensor::from_slice(&targets).to_device(device);
    let logits = model.model.forward(&inputs).to_kind(Kind::Float);
    let vocab = logits.size()[2];
    let nll = logits.view([-1, vocab]).cross_entropy_loss::<Tensor>(
        &targets,
        None,
        Reduction::None,
        PAD,
        0.0,
    );
    nll.view(shape)
}

/// A model's figures on one eval set: perplexity on held-out text, or the multiple-choice
/// figures on questions (which carry a `perplexity` too: 2^bits_per_byte_gold). Stored as
/// the one or the other's JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Evaluation {
    Text(EvalResult),
    Choices(super::choices::ChoiceResult),
}

impl From<EvalResult> for Evaluation {
    fn from(r: EvalResult) -> Evaluation {
        Evaluation::Text(r)
    }
}

impl Evaluation {
    /// The perplexity every ranking uses.
    pub fn perplexity(&self) -> f64 {
        match self {
            Evaluation::Text(r) => r.total.perplexity,
            Evaluation::Choices(r) => r.perplexity,
        }
    }
}
