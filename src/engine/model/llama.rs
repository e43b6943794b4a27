//! Llama: RMSNorm, rotary position embeddings, SwiGLU, grouped-query attention, optional qkv
//! bias, tied or untied embeddings. Covers Llama, Mistral, Qwen2, SmolLM and TinyLlama shapes.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn};

use super::{INIT_STD, Linear, causal_attention, residual_std};
use crate::engine::tokenizer::{BYTE_EOS, BYTE_VOCAB};

/// Field names and meanings as in Hugging Face's `LlamaConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LlamaConfig {
    pub architectures: Vec<String>,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub max_position_embeddings: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Rotary position scaling for long contexts; `None` for plain RoPE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub bos_token_id: i64,
    pub eos_token_id: i64,
    pub torch_dtype: String,
}

impl Default for LlamaConfig {
    fn default() -> Self {
        LlamaConfig {
            architectures: vec!["LlamaForCausalLM".into()],
            vocab_size: BYTE_VOCAB,
            hidden_size: 128,
            intermediate_size: 256,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 4,
            max_position_embeddings: 256,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            tie_word_embeddings: true,
            attention_bias: false,
            bos_token_id: BYTE_EOS,
            eos_token_id: BYTE_EOS,
            torch_dtype: "float32".into(),
        }
    }
}

/// Hugging Face's `rope_scaling` kinds that change only the rotary frequencies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase", deny_unknown_fields)]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's: low frequencies divided by `factor`, high ones kept, a smooth blend
    /// between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

impl RopeScaling {
    /// The scaled inverse frequencies, as Hugging Face computes them.
    fn apply(&self, inv_freq: Vec<f64>) -> Vec<f64> {
        match *self {
            RopeScaling::Linear { factor } => inv_freq.into_iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
                inv_freq
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }

    fn validate(&self) -> Result<(), String> {
        let ok = match *self {
            RopeScaling::Linear { factor } => factor.is_finite() && factor > 0.0,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                [factor, low_freq_factor, original_max_position_embeddings]
                    .iter()
                    .all(|v| v.is_finite() && *v > 0.0)
                    && high_freq_factor > low_freq_factor
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!("rope_scaling {self:?} has invalid values"))
        }
    }
}

impl LlamaConfig {
    fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v <= 0) {
            return Err(format!("{name} must be positive"));
        }
        if self.hidden_size % self.num_attention_heads != 0 || self.head_dim() % 2 != 0 {
            return Err("hidden_size / num_attention_heads must be an even integer".into());
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err("num_attention_heads must be a multiple of num_key_value_heads".into());
        }
        if self.rope_theta.is_nan()
            || self.rope_theta <= 0.0
            || self.rms_norm_eps.is_nan()
            || self.rms_norm_eps <= 0.0
        {
            return Err("rope_theta and rms_norm_eps must be positive".into());
        }
        match &self.rope_scaling {
            Some(scaling) => scaling.validate(),
            None => Ok(()),
        }
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn new(vs: nn::Path, c: &LlamaConfig) -> Self {
        let (d, hd) = (c.hidden_size, c.head_dim());
        let kv = c.num_key_value_heads * hd;
        let bias = c.attention_bias;
        Attention {
            q_proj: Linear::new(&vs / "q_proj", d, d, bias, INIT_STD),
            k_proj: Linear::new(&vs / "k_proj", d, kv, bias, INIT_STD),
            v_proj: Linear::new(&vs / "v_proj", d, kv, bias, INIT_STD),
            o_proj: Linear::new(
                &vs / "o_proj",
                d,
                d,
                false,
                residual_std(c.num_hidden_layers),
            ),
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: hd,
        }
    }

    fn forward(&self, x: &Tensor, rope: &Rope) -> Tensor {
        let (b, t, d) = x.size3().unwrap();
        let split = |y: Tensor, heads| y.view([b, t, heads, self.head_dim]).transpose(1, 2);
        let q = rope.apply(&split(self.q_proj.forward(x), self.heads));
        let k = rope.apply(&split(self.k_proj.forward(x), self.kv_heads));
        let v = split(self.v_proj.forward(x), self.kv_heads);
        let (k, v) = if self.kv_heads == self.heads {
            (k, v)
        } else {
            // Repeating the shared heads keeps the fused attention kernels usable.
            let n = self.heads / self.kv_heads;
            (
                k.repeat_interleave_self_int(n, 1, None),
                v.repeat_interleave_self_int(n, 1, None),
            )
        };
        let y = causal_attention(&q, &k, &v);
        self.o_proj.forward(&y.transpose(1, 2).reshape([b, t, d]))
    }
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn new(vs: nn::Path, c: &LlamaConfig) -> Self {
        let (d, i) = (c.hidden_size, c.intermediate_size);
        Mlp {
            gate_proj: Linear::new(&vs / "gate_proj", d, i, false, INIT_STD),
            up_proj: Linear::new(&vs / "up_proj", d, i, false, INIT_STD),
            down_proj: Linear::new(
                &vs / "down_proj",
                i,
                d,
                false,
                residual_std(c.num_hidden_layers),
            ),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.down_proj
            .forward(&(self.gate_proj.forward(x).silu() * self.up_proj.forward(x)))
    }
}

struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(vs: nn::Path, size: i64, eps: f64) -> Self {
        RmsNorm {
            weight: vs.var("weight", &[size], nn::Init::Const(1.0)),
            eps,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let size = [*x.size().last().unwrap()];
        x.rms_norm(size.as_slice(), Some(&self.weight), self.eps)
    }
}

struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

/// Rotary embeddings in Hugging Face's layout (the two halves of each head rotated together),
/// with cos and sin tables computed once for the whole context.
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(c: &LlamaConfig, device: tch::Device) -> Self {
        let hd = c.head_dim();
        let mut inv_freq: Vec<f64> = (0..hd / 2)
            .map(|i| c.rope_theta.powf(-((2 * i) as f64) / hd as f64))
            .collect();
        if let Some(scaling) = &c.rope_scaling {
            inv_freq = scaling.apply(inv_freq);
        }
        let inv_freq = Tensor::from_slice(&inv_freq).to_device(device);
        let positions = Tensor::arange(c.max_position_embeddings, (Kind::Double, device));
        let freqs = positions.outer(&inv_freq);
        let angles = Tensor::cat(&[&freqs, &freqs], -1);
        Rope {
            cos: angles.cos().to_kind(Kind::Float),
            sin: angles.sin().to_kind(Kind::Float),
        }
    }

    /// `x`: `[batch, heads, time, head_dim]`.
    fn apply(&self, x: &Tensor) -> Tensor {
        let t = x.size()[2];
        let half = x.size()[3] / 2;
        let rotated = Tensor::cat(&[-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1);
        let (cos, sin) = (self.cos.narrow(0, 0, t), self.sin.narrow(0, 0, t));
        (x * cos + rotated * sin).to_kind(x.kind())
    }
}

pub struct Llama {
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Tensor>,
    rope: Rope,
}

impl Llama {
    pub fn new(vs: &nn::Path, c: &LlamaConfig) -> Self {
        let model = vs / "model";
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        };
        let embed_tokens =
            (&model / "embed_tokens").var("weight", &[c.vocab_size, c.hidden_size], init);
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let vs = &model / "layers" / i;
                Block {
                    input_layernorm: RmsNorm::new(
                        &vs / "input_layernorm",
                        c.hidden_size,
                        c.rms_norm_eps,
                    ),
                    self_attn: Attention::new(&vs / "self_attn", c),
                    post_attention_layernorm: RmsNorm::new(
                        &vs / "post_attention_layernorm",
                        c.hidden_size,
                        c.rms_norm_eps,
                    ),
                    mlp: Mlp::new(&vs / "mlp", c),
                }
            })
            .collect();
        let norm = RmsNorm::new(&model / "norm", c.hidden_size, c.rms_norm_eps);
        let lm_head = (!c.tie_word_embeddings)
            .then(|| (vs / "lm_head").var("weight", &[c.vocab_size, c.hidden_size], init));
        Llama {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope: Rope::new(c, vs.device()),
        }
    }

    pub fn forward(&self, tokens: &Tensor) -> Tensor {
        let mut x = Tensor::embedding(&self.embed_tokens, tokens, -1, false, false);
        for block in &self.layers {
            x = &x
                + block
                    .self_attn
                    .forward(&block.input_layernorm.forward(&x), &self.rope);
            x = &x
                + block
                    .mlp
                    .forward(&block.post_attention_layernorm.forward(&x));
        }
        let x = self.norm.forward(&x);
        x.linear(
            self.lm_head.as_ref().unwrap_or(&self.embed_tokens),
            None::<Tensor>,
        )
    }
}
