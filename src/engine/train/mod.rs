//! Training for a fixed token budget: AdamW (weight decay on matrices only), warmup then a
//! cosine or constant schedule, gradient clipping and accumulation, bf16 autocast on CUDA.
//!
//! Training is a pure function of (initial weights, data, config): the data order is derived
//! from the seed and the step (see [`Sequences`]) and nothing else draws random numbers, so
//! the saved train state (weights, AdamW moments, step) is all that exact resume needs.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use self::adamw::AdamW;
use super::checkpoint::LoadedModel;
use super::data::Sequences;

mod adamw;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Cosine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp32 weights, bf16 autocast for matrix products on CUDA (the CPU always runs fp32).
    Bf16,
    Fp32,
}

/// The hyper-parameters of one training run (a service "recipe").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Tokens to train on, a multiple of `seq_len`; data smaller than this repeats.
    pub tokens: u64,
    /// Peak learning rate.
    pub lr: f64,
    /// The cosine schedule's final learning rate.
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub schedule: Schedule,
    /// Tokens per optimizer step, a multiple of `seq_len`.
    pub batch_tokens: u64,
    /// Sequences per forward pass; a step accumulates gradients over several when smaller
    /// than `batch_tokens / seq_len`.
    pub micro_batch: u64,
    pub seq_len: u64,
    pub seed: u64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Maximum global gradient norm; 0 disables clipping.
    pub grad_clip: f64,
    pub precision: Precision,
    /// Save the train state every this many steps (when a state folder is given).
    pub checkpoint_every: u64,
}

impl Default for TrainConfig {
    /// The unit-model recipe for the `tiny` preset: 204,800 tokens at a constant 3e-4, one
    /// tenth of the base's peak rate, as the paper continues pre-training (6e-4 → 6e-5).
    fn default() -> Self {
        TrainConfig {
            tokens: 204_800,
            lr: 3e-4,
            min_lr: 3e-4,
            warmup_steps: 0,
            schedule: Schedule::Constant,
            batch_tokens: 4096,
            micro_batch: 16,
            seq_len: 256,
            seed: 0,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            precision: Precision::Bf16,
            checkpoint_every: 50,
        }
    }
}

impl TrainConfig {
    /// Pre-training a `tiny` base: about 3M tokens, warmup then cosine from 3e-3 to 3e-4.
    pub fn pretrain() -> Self {
        TrainConfig {
            tokens: 736 * 4096,
            lr: 3e-3,
            min_lr: 3e-4,
            warmup_steps: 50,
            schedule: Schedule::Cosine,
            ..TrainConfig::default()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("tokens", self.tokens),
            ("batch_tokens", self.batch_tokens),
            ("micro_batch", self.micro_batch),
            ("seq_len", self.seq_len),
            ("checkpoint_every", self.checkpoint_every),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        if !self.tokens.is_multiple_of(self.seq_len)
            || !self.batch_tokens.is_multiple_of(self.seq_len)
        {
            return Err(format!(
                "tokens and batch_tokens must be multiples of seq_len ({})",
                self.seq_len
            ));
        }
        let rates = [("lr", self.lr), ("min_lr", self.min_lr), ("eps", self.eps)];
        if let Some((name, _)) = rates.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
            return Err(format!("{name} must be a positive number"));
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return Err("beta1 and beta2 must be in [0, 1)".into());
        }
        if !(self.weight_decay >= 0.0 && self.grad_clip >= 0.0) {
            return Err("weight_decay and grad_clip must be non-negative".into());
        }
        Ok(())
    }

    fn sequences_per_step(&self) -> u64 {
        self.batch_tokens / self.seq_len
    }

    /// Optimizer steps for the budget; the last one is smaller when the budget is not a
    /// multiple of `batch_tokens`.
    pub fn steps(&self) -> u64 {
        (self.tokens / self.seq_len).div_ceil(self.sequences_per_step())
    }

    /// Learning rate of step `step` (0-based): linear warmup, then constant or cosine decay.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                let decay_steps = (self.steps().saturating_sub(self.warmup_steps)).max(1);
                let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
                self.min_lr
                    + 0.5
                        * (self.lr - self.min_lr)
                        * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training config: {0}")]
    Config(String),
    #[error("{0}")]
    Data(String),
    #[error("loss became {loss} at step {step}: lower the learning rate or check the data")]
    NonFinite { step: u64, loss: f64 },
    #[error("train state {path}: {message}")]
    State { path: String, message: String },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Reported after every optimizer step.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub step: u64,
    pub steps: u64,
    pub tokens: u64,
    pub loss: f64,
    pub lr: f64,
    pub tokens_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub steps: u64,
    pub tokens: u64,
    /// The step this run started from (non-zero when it resumed a saved state).
    pub resumed_at: u64,
    pub final_loss: f64,
    pub seconds: f64,
    pub tokens_per_sec: f64,
}

#[derive(Debug)]
pub enum Outcome {
    Finished(Summary),
    /// The cancel flag was seen before `step`; the state was saved there when a folder was given.
    Cancelled {
        step: u64,
    },
}

#[derive(Default)]
pub struct TrainOptions<'a> {
    /// Folder for the train state: resumed from when it holds one, saved to periodically.
    pub state_dir: Option<&'a Path>,
    pub cancel: Option<&'a AtomicBool>,
    pub progress: Option<&'a mut dyn FnMut(&Progress)>,
    /// Where to write, once training finishes, AdamW's bias-corrected second moments
    /// v / (1 − β₂ᵗ), one fp32 tensor per parameter under its name: the diagonal Fisher
    /// estimate that a Fisher-weighted merge weighs each coordinate by.
    pub moments: Option<&'a Path>,
}

/// Trains `model` in place on the token stream for `config.tokens` tokens.
pub fn train(
    model: &LoadedModel,
    tokens: &[u32],
    config: &TrainConfig,
    options: TrainOptions,
) -> Result<Outcome, TrainError> {
    config.validate().map_err(TrainError::Config)?;
    let sequences =
        Sequences::new(tokens, config.seq_len as usize, config.seed).map_err(TrainError::Data)?;
    train_on(model, sequences, config, options)
}

/// Trains `model` in place on `sequences` (made with `config.seq_len` and `config.seed`) for
/// `config.tokens` tokens.
pub fn train_on(
    model: &LoadedModel,
    mut sequences: Sequences,
    config: &TrainConfig,
    mut options: TrainOptions,
) -> Result<Outcome, TrainError> {
    config.validate().map_err(TrainError::Config)?;
    let context = model.config.context_length() as u64;
    if config.seq_len > context {
        return Err(TrainError::Config(format!(
            "seq_len {} exceeds the model's context {context}",
            config.seq_len
        )));
    }
    let device = model.vs.device();
    let autocast = config.precision == Precision::Bf16 && device.is_cuda();
    let vocab = model.config.vocab_size();
    let mut adam = AdamW::new(model);
    let steps = config.steps();
    let total_sequences = config.tokens / config.seq_len;

    let start = match options.state_dir {
        Some(dir) => adam.resume(dir, config)?,
        None => 0,
    };
    let started = Instant::now();
    let mut loss = f64::NAN;
    for step in start..steps {
        if options.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            if let Some(dir) = options.state_dir {
                adam.save(dir, config, step)?;
            }
            return Ok(Outcome::Cancelled { step });
        }
        let first = step * config.sequences_per_step();
        let count = config.sequences_per_step().min(total_sequences - first);
        adam.zero_grad();
        let mut step_loss = Tensor::zeros([], (Kind::Float, device));
        let mut index = first;
        while index < first + count {
            let micro = config.micro_batch.min(first + count - index);
            let batch = batch_tensor(&mut sequences, index, micro, device);
            let inputs = batch.narrow(1, 0, config.seq_len as i64);
            let targets = batch.narrow(1, 1, config.seq_len as i64);
            let micro_loss = tch::autocast(autocast, || {
                let logits = model.model.forward(&inputs);
                logits
                    .view([-1, vocab])
                    .to_kind(Kind::Float)
                    .cross_entropy_loss::<Tensor>(
                        &targets.reshape([-1]),
                        None,
                        Reduction::Mean,
                        -100,
                        0.0,
                    )
            }) * (micro as f64 / count as f64);
            micro_loss.backward();
            step_loss += micro_loss.detach();
            index += micro;
        }
        loss = step_loss.double_value(&[]);
        if !loss.is_finite() {
            return Err(TrainError::NonFinite { step, loss });
        }
        let lr = config.lr_at(step);
        tch::no_grad(|| adam.step(config, lr, step + 1));
        if let Some(progress) = options.progress.as_mut() {
            let trained = (step + 1 - start) * config.batch_tokens;
            progress(&Progress {
                step: step + 1,
                steps,
                tokens: ((step + 1) * config.batch_tokens).min(config.tokens),
                loss,
                lr,
                tokens_per_sec: trained as f64 / started.elapsed().as_secs_f64(),
            });
        }
        if let Some(dir) = options.state_dir
            && (step + 1) % config.checkpoint_every == 0
            && step + 1 < steps
        {
            adam.save(dir, config, step + 1)?;
        }
    }
    if let Some(path) = options.moments {
        adam.save_moments(path, config, steps)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let trained = config.tokens - (start * config.batch_tokens).min(config.tokens);
    Ok(Outcome::Finished(Summary {
        steps,
        tokens: config.tokens,
        resumed_at: start,
        final_loss: loss,
        seconds,
        tokens_per_sec: trained as f64 / seconds,
    }))
}

/// Sequences `first..first + count` as an int64 tensor `[count, seq_len + 1]` on `device`.
fn batch_tensor(sequences: &mut Sequences, first: u64, count: u64, device: Device) -> Tensor {
    let mut ids = Vec::new();
    for i in first..first + count {
        ids.extend(sequences.get(i).iter().map(|&t| t as i64));
    }
    Tensor::from_slice(&ids)
        .view([count as i64, -1])
        .to_device(device)
}
