//! Causal language models whose parameter names equal the Hugging Face checkpoint names, so
//! `model.safetensors` loads and saves as is.

pub mod gpt2;
pub mod llama;

use serde::{Deserialize, Serialize};
use tch::{Tensor, nn};

pub use gpt2::Gpt2Config;
pub use llama::LlamaConfig;

/// Architecture and shape, serialised as the `config.json` beside each checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model_type")]
pub enum ModelConfig {
    #[serde(rename = "llama")]
    Llama(LlamaConfig),
    #[serde(rename = "gpt2")]
    Gpt2(Gpt2Config),
}

/// The built-in presets. All use the byte-level tokenizer (vocabulary 257: 256 bytes + EOS).
pub const PRESETS: &[&str] = &["tiny", "small", "base-130m", "tiny-gpt2"];

impl ModelConfig {
    /// `tiny` (~0.6M parameters, tests), `small` (~10M, CPU demos), `base-130m` (the paper's
    /// 130M shape: width 768, 12 layers, 12 heads, context 2048; 85M parameters outside the
    /// embedding, which is small here because the vocabulary is bytes) and `tiny-gpt2`.
    pub fn preset(name: &str) -> Option<Self> {
        let llama = |hidden, inter, layers, heads, kv_heads, context| {
            ModelConfig::Llama(LlamaConfig {
                hidden_size: hidden,
                intermediate_size: inter,
                num_hidden_layers: layers,
                num_attention_heads: heads,
                num_key_value_heads: kv_heads,
                max_position_embeddings: context,
                ..LlamaConfig::default()
            })
        };
        match name {
            "tiny" => Some(llama(128, 256, 4, 4, 2, 256)),
            "small" => Some(llama(384, 1024, 6, 6, 2, 512)),
            "base-130m" => Some(llama(768, 2048, 12, 12, 12, 2048)),
            "tiny-gpt2" => Some(ModelConfig::Gpt2(Gpt2Config::default())),
            _ => None,
        }
    }

    pub fn vocab_size(&self) -> i64 {
        match self {
            ModelConfig::Llama(c) => c.vocab_size,
            ModelConfig::Gpt2(c) => c.vocab_size,
        }
    }

    /// The longest sequence the model attends over.
    pub fn context_length(&self) -> i64 {
        match self {
            ModelConfig::Llama(c) => c.max_position_embeddings,
            ModelConfig::Gpt2(c) => c.n_positions,
        }
    }

    pub fn bos_token_id(&self) -> u32 {
        match self {
            ModelConfig::Llama(c) => c.bos_token_id as u32,
            ModelConfig::Gpt2(c) => c.bos_token_id as u32,
        }
    }

    pub fn eos_token_id(&self) -> i64 {
        match self {
            ModelConfig::Llama(c) => c.eos_token_id,
            ModelConfig::Gpt2(c) => c.eos_token_id,
        }
    }

    /// Checks the shape for consistency before any tensor is allocated.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            ModelConfig::Llama(c) => c.validate(),
            ModelConfig::Gpt2(c) => c.validate(),
        }
    }

    /// Matrix-multiply FLOPs per trained token (forward + backward), for MFU figures:
    /// 6 × parameters in matrices + 12 × layers × width × context (attention scores).
    pub fn train_flops_per_token(&self, parameters: i64) -> f64 {
        let (layers, width, context) = match self {
            ModelConfig::Llama(c) => (
                c.num_hidden_layers,
                c.hidden_size,
                c.max_position_embeddings,
            ),
            ModelConfig::Gpt2(c) => (c.n_layer, c.n_embd, c.n_positions),
        };
        6.0 * parameters as f64 + 12.0 * (layers * width * context) as f64
    }
}

/// A model built over the variables of a `VarStore` path.
pub enum Model {
    Llama(llama::Llama),
    Gpt2(gpt2::Gpt2),
}

impl Model {
    /// Creates the model's variables (randomly initialised from torch's current seed).
    pub fn new(vs: &nn::Path, config: &ModelConfig) -> Self {
        match config {
            ModelConfig::Llama(c) => Model::Llama(llama::Llama::new(vs, c)),
            ModelConfig::Gpt2(c) => Model::Gpt2(gpt2::Gpt2::new(vs, c)),
        }
    }

    /// Token ids `[batch, time]` (int64) to logits `[batch, time, vocab]`.
    pub fn forward(&self, tokens: &Tensor) -> Tensor {
        match self {
            Model::Llama(m) => m.forward(tokens),
            Model::Gpt2(m) => m.forward(tokens),
        }
    }
}

/// A linear layer's weight `[out, in]` and optional bias, as in `torch.nn.Linear`.
pub(crate) struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(vs: nn::Path, inputs: i64, outputs: i64, bias: bool, stdev: f64) -> Self {
        let weight = vs.var(
            "weight",
            &[outputs, inputs],
            nn::Init::Randn { mean: 0.0, stdev },
        );
        let bias = bias.then(|| vs.var("bias", &[outputs], nn::Init::Const(0.0)));
        Linear { weight, bias }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// Standard deviation of the initial weights (GPT-2's), and of the residual projections,
/// which are scaled down by the depth so the residual stream's variance does not grow.
pub(crate) const INIT_STD: f64 = 0.02;

/// Causal self-attention over `[batch, heads, time, head_dim]`, through libtorch's fused
/// kernels (flash or memory-efficient where they apply).
pub(crate) fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    Tensor::scaled_dot_product_attention(q, k, v, None::<Tensor>, 0.0, true, None, false)
}

pub(crate) fn residual_std(layers: i64) -> f64 {
    INIT_STD / (2.0 * layers as f64).sqrt()
}
