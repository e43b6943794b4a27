//! GPT-2: learned positions, LayerNorm, GELU (tanh approximation), fused qkv projection and
//! tied embeddings. Weights use Hugging Face's `Conv1D` layout, `[in, out]`.

use serde::{Deserialize, Serialize};
use tch::{Tensor, nn};

use super::{INIT_STD, causal_attention, residual_std};
use crate::engine::tokenizer::{BYTE_EOS, BYTE_VOCAB};

/// Field names and meanings as in Hugging Face's `GPT2Config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Gpt2Config {
    pub architectures: Vec<String>,
    pub vocab_size: i64,
    pub n_embd: i64,
    pub n_layer: i64,
    pub n_head: i64,
    pub n_positions: i64,
    pub n_inner: Option<i64>,
    pub layer_norm_epsilon: f64,
    pub bos_token_id: i64,
    pub eos_token_id: i64,
    pub torch_dtype: String,
}

impl Default for Gpt2Config {
    fn default() -> Self {
        Gpt2Config {
            architectures: vec!["GPT2LMHeadModel".into()],
            vocab_size: BYTE_VOCAB,
            n_embd: 128,
            n_layer: 2,
            n_head: 4,
            n_positions: 256,
            n_inner: None,
            layer_norm_epsilon: 1e-5,
            bos_token_id: BYTE_EOS,
            eos_token_id: BYTE_EOS,
            torch_dtype: "float32".into(),
        }
    }
}

impl Gpt2Config {
    fn inner(&self) -> i64 {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_positions", self.n_positions),
            ("n_inner", self.inner()),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v <= 0) {
            return Err(format!("{name} must be positive"));
        }
        if self.n_embd % self.n_head != 0 {
            return Err("n_embd must be a multiple of n_head".into());
        }
        Ok(())
    }
}

/// `torch.nn.Linear` with its weight transposed, as Hugging Face's `Conv1D` stores it.
struct Conv1D {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1D {
    fn new(vs: nn::Path, inputs: i64, outputs: i64, stdev: f64) -> Self {
        Conv1D {
            weight: vs.var(
                "weight",
                &[inputs, outputs],
                nn::Init::Randn { mean: 0.0, stdev },
            ),
            bias: vs.var("bias", &[outputs], nn::Init::Const(0.0)),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.weight) + &self.bias
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(vs: nn::Path, size: i64, eps: f64) -> Self {
        LayerNorm {
            weight: vs.var("weight", &[size], nn::Init::Const(1.0)),
            bias: vs.var("bias", &[size], nn::Init::Const(0.0)),
            eps,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let size = [*x.size().last().unwrap()];
        x.layer_norm(
            size.as_slice(),
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

struct Block {
    ln_1: LayerNorm,
    c_attn: Conv1D,
    attn_proj: Conv1D,
    ln_2: LayerNorm,
    c_fc: Conv1D,
    mlp_proj: Conv1D,
    heads: i64,
}

impl Block {
    fn new(vs: nn::Path, c: &Gpt2Config) -> Self {
        let d = c.n_embd;
        let residual = residual_std(c.n_layer);
        Block {
            ln_1: LayerNorm::new(&vs / "ln_1", d, c.layer_norm_epsilon),
            c_attn: Conv1D::new(&vs / "attn" / "c_attn", d, 3 * d, INIT_STD),
            attn_proj: Conv1D::new(&vs / "attn" / "c_proj", d, d, residual),
            ln_2: LayerNorm::new(&vs / "ln_2", d, c.layer_norm_epsilon),
            c_fc: Conv1D::new(&vs / "mlp" / "c_fc", d, c.inner(), INIT_STD),
            mlp_proj: Conv1D::new(&vs / "mlp" / "c_proj", c.inner(), d, residual),
            heads: c.n_head,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, t, d) = x.size3().unwrap();
        let qkv = self.c_attn.forward(&self.ln_1.forward(x)).split(d, -1);
        let heads = |y: &Tensor| y.view([b, t, self.heads, d / self.heads]).transpose(1, 2);
        let (q, k, v) = (heads(&qkv[0]), heads(&qkv[1]), heads(&qkv[2]));
        let y = causal_attention(&q, &k, &v);
        let x = x + self
            .attn_proj
            .forward(&y.transpose(1, 2).reshape([b, t, d]));
        let h = self.c_fc.forward(&self.ln_2.forward(&x)).gelu("tanh");
        &x + self.mlp_proj.forward(&h)
    }
}

pub struct Gpt2 {
    wte: Tensor,
    wpe: Tensor,
    h: Vec<Block>,
    ln_f: LayerNorm,
}

impl Gpt2 {
    pub fn new(vs: &nn::Path, c: &Gpt2Config) -> Self {
        let tr = vs / "transformer";
        let init = |stdev| nn::Init::Randn { mean: 0.0, stdev };
        Gpt2 {
            wte: (&tr / "wte").var("weight", &[c.vocab_size, c.n_embd], init(INIT_STD)),
            wpe: (&tr / "wpe").var("weight", &[c.n_positions, c.n_embd], init(0.01)),
            h: (0..c.n_layer)
                .map(|i| Block::new(&tr / "h" / i, c))
                .collect(),
            ln_f: LayerNorm::new(&tr / "ln_f", c.n_embd, c.layer_norm_epsilon),
        }
    }

    pub fn forward(&self, tokens: &Tensor) -> Tensor {
        let t = tokens.size()[1];
        let positions = self.wpe.narrow(0, 0, t);
        let mut x = Tensor::embedding(&self.wte, tokens, -1, false, false) + positions;
        for block in &self.h {
            x = block.forward(&x);
        }
        self.ln_f.forward(&x).linear(&self.wte, None::<Tensor>)
    }
}
