//! AdamW with its moments as plain tensors, saved beside the weights for an exact resume
//! (tch's optimizers keep theirs inside libtorch, out of reach), and its final second
//! moments kept as the unit model's diagonal Fisher estimate.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::{TrainConfig, TrainError};
use crate::engine::checkpoint::LoadedModel;

/// AdamW with its moments as plain tensors, so they can be saved and resumed (tch's
/// optimizers keep theirs inside libtorch, out of reach).
pub(super) struct AdamW {
    /// (name, parameter, first moment, second moment), sorted by name.
    params: Vec<(String, Tensor, Tensor, Tensor)>,
}

const STATE_FILE: &str = "train_state.json";

#[derive(Serialize, Deserialize)]
struct SavedState {
    step: u64,
    tensors: String,
    config: TrainConfig,
}

impl AdamW {
    pub(super) fn new(model: &LoadedModel) -> Self {
        let mut named: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let params = named
            .into_iter()
            .map(|(name, p)| {
                let (m, v) = (p.zeros_like(), p.zeros_like());
                (name, p, m, v)
            })
            .collect();
        AdamW { params }
    }

    pub(super) fn zero_grad(&mut self) {
        for (_, p, _, _) in &self.params {
            let mut grad = p.grad();
            if grad.defined() {
                let _ = grad.zero_();
            }
        }
    }

    /// Clips the global gradient norm, then takes one AdamW step (`t` counts from 1).
    pub(super) fn step(&mut self, c: &TrainConfig, lr: f64, t: u64) {
        let grads: Vec<Tensor> = self.params.iter().map(|(_, p, _, _)| p.grad()).collect();
        if c.grad_clip > 0.0 {
            let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
            let total = Tensor::stack(&norms, 0).norm();
            let scale = (c.grad_clip / (total + 1e-6)).clamp_max(1.0);
            for g in &grads {
                let _ = g.shallow_clone().g_mul_(&scale);
            }
        }
        let bias1 = 1.0 - c.beta1.powi(t as i32);
        let bias2_sqrt = (1.0 - c.beta2.powi(t as i32)).sqrt();
        // p -= lr/bias1 · m / (√v/√bias2 + eps), written as p += m / d with
        // d = (√v/√bias2 + eps) · (-bias1/lr): one temporary, updated in place.
        let scale = -bias1 / lr;
        for ((_, p, m, v), g) in self.params.iter_mut().zip(&grads) {
            if c.weight_decay > 0.0 && p.dim() >= 2 {
                let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
            }
            let _ = m.lerp_(g, 1.0 - c.beta1);
            let _ = v.lerp_(&g.square(), 1.0 - c.beta2);
            let mut denom = v.sqrt();
            let _ = denom.g_mul_scalar_(scale / bias2_sqrt);
            let _ = denom.g_add_scalar_(c.eps * scale);
            let _ = p.addcdiv_(m, &denom);
        }
    }

    /// Saves weights and moments under a new name, then points `train_state.json` at it with
    /// an atomic rename, so a crash mid-save leaves the previous state intact.
    pub(super) fn save(
        &self,
        dir: &Path,
        config: &TrainConfig,
        step: u64,
    ) -> Result<(), TrainError> {
        let err = |path: &Path, e: &dyn std::fmt::Display| TrainError::State {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| err(dir, &e))?;
        let name = format!("state-{step}.safetensors");
        let mut tensors = Vec::with_capacity(3 * self.params.len());
        for (n, p, m, v) in &self.params {
            tensors.push((format!("param.{n}"), p.to_device(Device::Cpu)));
            tensors.push((format!("exp_avg.{n}"), m.to_device(Device::Cpu)));
            tensors.push((format!("exp_avg_sq.{n}"), v.to_device(Device::Cpu)));
        }
        let partial = dir.join(format!("state-{step}.partial.safetensors"));
        Tensor::write_safetensors(&tensors, &partial).map_err(|e| err(&partial, &e))?;
        std::fs::rename(&partial, dir.join(&name)).map_err(|e| err(dir, &e))?;
        let saved = SavedState {
            step,
            tensors: name.clone(),
            config: config.clone(),
        };
        let json = dir.join("train_state.partial.json");
        std::fs::write(&json, serde_json::to_vec_pretty(&saved).unwrap())
            .map_err(|e| err(&json, &e))?;
        std::fs::rename(&json, dir.join(STATE_FILE)).map_err(|e| err(dir, &e))?;
        for entry in std::fs::read_dir(dir).map_err(|e| err(dir, &e))?.flatten() {
            let file = entry.file_name().to_string_lossy().to_string();
            if file.starts_with("state-") && file != name {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Writes the bias-corrected second moments after `t` steps to `path` (through a
    /// temporary file and a rename).
    pub(super) fn save_moments(
        &self,
        path: &Path,
        c: &TrainConfig,
        t: u64,
    ) -> Result<(), TrainError> {
        let bias2 = 1.0 - c.beta2.powi(t as i32);
        let tensors: Vec<(String, Tensor)> = self
            .params
            .iter()
            .map(|(n, _, _, v)| {
                (
                    n.clone(),
                    (v / bias2).to_kind(Kind::Float).to_device(Device::Cpu),
                )
            })
            .collect();
        let partial = path.with_extension("partial");
        path.parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .map_err(tch::TchError::from)
            .and_then(|()| Tensor::write_safetensors(&tensors, &partial))
            .and_then(|()| Ok(std::fs::rename(&partial, path)?))
            .map_err(|e| TrainError::State {
                path: path.display().to_string(),
                message: e.to_string(),
            })
    }

    /// Loads the saved state from `dir` if there is one; returns the step to continue from.
    pub(super) fn resume(&mut self, dir: &Path, config: &TrainConfig) -> Result<u64, TrainError> {
        let path = dir.join(STATE_FILE);
        let err = |message: String| TrainError::State {
            path: path.display().to_string(),
            message,
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(err(e.to_string())),
        };
        let saved: SavedState = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        if &saved.config != config {
            return Err(err(
                "saved with a different training config; remove it to start over".into(),
            ));
        }
        let tensors: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.join(&saved.tensors))
                .map_err(|e| err(e.to_string()))?
                .into_iter()
                .collect();
        tch::no_grad(|| {
            for (n, p, m, v) in &mut self.params {
                for (prefix, dst) in [("param", &mut *p), ("exp_avg", m), ("exp_avg_sq", v)] {
                    let src = tensors
                        .get(&format!("{prefix}.{n}"))
                        .ok_or_else(|| err(format!("no {prefix}.{n}")))?;
                    dst.f_copy_(src).map_err(|e| err(e.to_string()))?;
                }
            }
            Ok(saved.step)
        })
    }
}
