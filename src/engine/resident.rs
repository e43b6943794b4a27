//! Unit models held in memory on the worker's device and merged into one working model in
//! place: nothing is written to or read from disk per merge. Scores and sweeps take this path.
//!
//! The arithmetic is [`super::merge`]'s: an fp64 accumulator over the inputs in their given
//! order, rounded to the checkpoints' dtype (plain loops on the CPU, libtorch on an
//! accelerator). A resident merge therefore sets exactly the parameters that `merge_files`
//! writes and `LoadedModel::load` reads back, and the model evaluates to the same numbers.

use safetensors::{Dtype, SafeTensors};
use tch::{Device, Tensor};

use super::checkpoint::LoadedModel;
use super::merge::{
    CPU_BLOCK, MergeError, accumulate, average_tensors, encode, kind_of, normalize_weights,
};

/// One unit model's weights, in the working model's parameter order.
pub struct Unit {
    tensors: Vec<Held>,
    bytes: u64,
}

enum Held {
    /// Raw little-endian bytes in the checkpoint's dtype (CPU merges run over them).
    Host(Vec<u8>),
    /// A tensor in the checkpoint's dtype on the accelerator.
    Device(Tensor),
}

/// A unit model's diagonal Fisher estimate (its final AdamW second moments), in the working
/// model's parameter order, fp32 on the workspace's device.
pub struct Fisher {
    tensors: Vec<Tensor>,
    bytes: u64,
}

impl Fisher {
    /// Memory the estimate takes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// Added to every Fisher value so a coordinate no unit's training moved (all zeros) is
/// averaged plainly instead of dividing zero by zero.
const FISHER_FLOOR: f64 = 1e-30;

impl Unit {
    /// Memory the unit takes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The model that merges are written into, and the layout every unit must have.
pub struct Workspace {
    model: LoadedModel,
    params: Vec<Param>,
    acc: Vec<f64>,
    out: Vec<u8>,
}

struct Param {
    name: String,
    /// Shares its storage with the model's variable.
    var: Tensor,
    shape: Vec<usize>,
    /// The checkpoints' dtype, fixed by the first unit loaded.
    dtype: Option<Dtype>,
}

impl Workspace {
    /// Takes the model whose parameters each merge overwrites (its own values do not matter).
    pub fn new(model: LoadedModel) -> Workspace {
        let mut params: Vec<Param> = model
            .vs
            .variables()
            .into_iter()
            .map(|(name, var)| Param {
                shape: var.size().iter().map(|&d| d as usize).collect(),
                name,
                var,
                dtype: None,
            })
            .collect();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        Workspace {
            model,
            params,
            acc: vec![0.0; CPU_BLOCK],
            out: Vec::new(),
        }
    }

    /// The model with the last merge's parameters.
    pub fn model(&self) -> &LoadedModel {
        &self.model
    }

    pub fn device(&self) -> Device {
        self.model.vs.device()
    }

    /// What one unit model of this architecture takes in memory, in fp32.
    pub fn unit_bytes(&self) -> u64 {
        self.params
            .iter()
            .map(|p| p.shape.iter().product::<usize>() as u64 * 4)
            .sum()
    }

    /// Reads a unit model's `model.safetensors` bytes onto the workspace's device. Its tensors
    /// must be exactly the model's parameters, with their shapes, in a floating-point dtype
    /// shared by every unit; `source` names it in errors.
    pub fn load_unit(&mut self, bytes: &[u8], source: &str) -> Result<Unit, MergeError> {
        let file = SafeTensors::deserialize(bytes).map_err(|e| MergeError::Read {
            path: source.to_string(),
            message: e.to_string(),
        })?;
        let mismatch = |message: String| MergeError::Mismatch {
            path: source.to_string(),
            first: "the base model".into(),
            message,
        };
        if file.len() != self.params.len() {
            return Err(mismatch(format!(
                "{} tensors, not {}",
                file.len(),
                self.params.len()
            )));
        }
        let device = self.device();
        let mut tensors = Vec::with_capacity(self.params.len());
        let mut total = 0u64;
        for param in &mut self.params {
            let view = file
                .tensor(&param.name)
                .map_err(|_| mismatch(format!("no tensor {}", param.name)))?;
            if view.shape() != param.shape.as_slice() {
                return Err(mismatch(format!(
                    "{} has shape {:?}, not {:?}",
                    param.name,
                    view.shape(),
                    param.shape
                )));
            }
            let kind = kind_of(view.dtype()).ok_or_else(|| MergeError::Dtype {
                path: source.to_string(),
                name: param.name.clone(),
                dtype: view.dtype(),
            })?;
            match param.dtype {
                Some(dtype) if dtype != view.dtype() => {
                    return Err(mismatch(format!(
                        "{} is {:?}, not {dtype:?}",
                        param.name,
                        view.dtype()
                    )));
                }
                _ => param.dtype = Some(view.dtype()),
            }
            total += view.data().len() as u64;
            tensors.push(if device == Device::Cpu {
                Held::Host(view.data().to_vec())
            } else {
                let shape: Vec<i64> = param.shape.iter().map(|&d| d as i64).collect();
                Held::Device(Tensor::from_data_size(view.data(), &shape, kind).to_device(device))
            });
        }
        Ok(Unit {
            tensors,
            bytes: total,
        })
    }

    /// Reads a unit's Fisher estimate (`fisher.safetensors`: one tensor per parameter, by
    /// name, of its shape) onto the workspace's device; `source` names it in errors.
    pub fn load_fisher(&self, bytes: &[u8], source: &str) -> Result<Fisher, MergeError> {
        let err = |message: String| MergeError::Read {
            path: source.to_string(),
            message,
        };
        let file = SafeTensors::deserialize(bytes).map_err(|e| err(e.to_string()))?;
        let mut tensors = Vec::with_capacity(self.params.len());
        let mut total = 0u64;
        for param in &self.params {
            let view = file
                .tensor(&param.name)
                .map_err(|_| err(format!("no tensor {}", param.name)))?;
            if view.shape() != param.shape.as_slice() || view.dtype() != Dtype::F32 {
                return Err(err(format!(
                    "{} is {:?} {:?}, not F32 {:?}",
                    param.name,
                    view.dtype(),
                    view.shape(),
                    param.shape
                )));
            }
            let shape: Vec<i64> = param.shape.iter().map(|&d| d as i64).collect();
            total += view.data().len() as u64;
            tensors.push(
                Tensor::from_data_size(view.data(), &shape, tch::Kind::Float)
                    .to_device(self.device()),
            );
        }
        Ok(Fisher {
            tensors,
            bytes: total,
        })
    }

    /// Sets the model's parameters to the Fisher-weighted average of `units`: per coordinate,
    /// θ = Σ_k α_k F_k θ_k / Σ_j α_j F_j, with each unit's Fisher value F_k taken relative to
    /// the largest of them at that coordinate. Where the units' estimates are equal every
    /// relative value is exactly 1, the coordinate weights are exactly α_k / Σ α_j, and the
    /// merge is the plain average's bit for bit (on the CPU; an fp64 accumulator rounded to
    /// the checkpoints' dtype, in the units' order, as there).
    pub fn merge_fisher(
        &mut self,
        units: &[(&Unit, &Fisher)],
        weights: &[f64],
    ) -> Result<(), MergeError> {
        if units.len() != weights.len() {
            return Err(MergeError::WeightCount {
                inputs: units.len(),
                weights: weights.len(),
            });
        }
        normalize_weights(weights)?;
        let double = tch::Kind::Double;
        tch::no_grad(|| {
            for (p, param) in self.params.iter_mut().enumerate() {
                let kind = kind_of(param.dtype.expect("set when the units were loaded"))
                    .expect("checked when loaded");
                let shape: Vec<i64> = param.shape.iter().map(|&d| d as i64).collect();
                let fisher: Vec<Tensor> = units
                    .iter()
                    .map(|(_, f)| f.tensors[p].to_kind(double) + FISHER_FLOOR)
                    .collect();
                let largest = fisher[1..]
                    .iter()
                    .fold(fisher[0].shallow_clone(), |m, f| m.maximum(f));
                let scaled: Vec<Tensor> = fisher
                    .iter()
                    .zip(weights)
                    .map(|(f, &a)| (f / &largest) * a)
                    .collect();
                let total = scaled[1..]
                    .iter()
                    .fold(scaled[0].shallow_clone(), |sum, s| sum + s);
                let mut merged: Option<Tensor> = None;
                for ((unit, _), s) in units.iter().zip(&scaled) {
                    let theta = match &unit.tensors[p] {
                        Held::Device(t) => t.to_kind(double),
                        Held::Host(data) => {
                            Tensor::from_data_size(data, &shape, kind).to_kind(double)
                        }
                    };
                    let term = theta * (s / &total);
                    merged = Some(match merged {
                        None => term,
                        Some(acc) => acc + term,
                    });
                }
                param
                    .var
                    .copy_(&merged.expect("at least one unit").to_kind(kind));
            }
        });
        Ok(())
    }

    /// The mean NLL on `prepared` of the merge of `units` with `weights` (which sum to 1),
    /// and its gradient with respect to each weight. The merged parameters are linear in the
    /// weights, θ = Σ α_k θ_k, so ∂L/∂α_k = Σ ⟨∂L/∂θ, θ_k⟩ over the parameters: one backward
    /// pass through the merged model gives every α's derivative. (Along the simplex only
    /// differences of these derivatives matter.) The working model is left holding the merge.
    pub fn alpha_gradient(
        &mut self,
        units: &[&Unit],
        weights: &[f64],
        prepared: &super::eval::Prepared,
        batch_size: usize,
    ) -> Result<(f64, Vec<f64>), MergeError> {
        self.merge(units, weights)?;
        for param in &mut self.params {
            param.var.zero_grad();
        }
        let loss = prepared.mean_nll_backward(&self.model, batch_size);
        let mut gradient = vec![0.0; units.len()];
        tch::no_grad(|| {
            for (p, param) in self.params.iter_mut().enumerate() {
                let grad = param.var.grad();
                if !grad.defined() {
                    continue;
                }
                let grad = grad.to_kind(tch::Kind::Double);
                let kind = kind_of(param.dtype.expect("set when the units were loaded"))
                    .expect("checked when loaded");
                let shape: Vec<i64> = param.shape.iter().map(|&d| d as i64).collect();
                for (k, unit) in units.iter().enumerate() {
                    let theta = match &unit.tensors[p] {
                        Held::Device(t) => t.shallow_clone(),
                        Held::Host(data) => Tensor::from_data_size(data, &shape, kind),
                    };
                    let dot = (&grad * theta.to_kind(tch::Kind::Double)).sum(tch::Kind::Double);
                    gradient[k] += dot.double_value(&[]);
                }
                param.var.zero_grad();
            }
        });
        Ok((loss, gradient))
    }

    /// Sets the model's parameters to the weighted average of `units` (weights checked and
    /// normalised here).
    pub fn merge(&mut self, units: &[&Unit], weights: &[f64]) -> Result<(), MergeError> {
        if units.len() != weights.len() {
            return Err(MergeError::WeightCount {
                inputs: units.len(),
                weights: weights.len(),
            });
        }
        let weights = normalize_weights(weights)?;
        self.combine(units, &weights);
        Ok(())
    }

    /// Sets the model's parameters to the task-vector merge θ_base + λ Σ α_k (θ_k − θ_base)
    /// of `units` with `weights` (checked and normalised, so Σ α = 1): the linear
    /// combination (1 − λ) θ_base + Σ λ α_k θ_k, accumulated as the average is, base first.
    /// λ = 1 gives the base a coefficient of exactly 0 and is the plain average bit for bit
    /// (on the CPU); λ = 0 is the base.
    pub fn merge_task_vectors(
        &mut self,
        base: &Unit,
        units: &[&Unit],
        weights: &[f64],
        lambda: f64,
    ) -> Result<(), MergeError> {
        if units.len() != weights.len() {
            return Err(MergeError::WeightCount {
                inputs: units.len(),
                weights: weights.len(),
            });
        }
        if !lambda.is_finite() {
            return Err(MergeError::BadWeight {
                index: 0,
                value: lambda,
            });
        }
        let weights = normalize_weights(weights)?;
        let mut inputs = vec![base];
        inputs.extend_from_slice(units);
        let mut coefficients = vec![1.0 - lambda];
        coefficients.extend(weights.iter().map(|w| lambda * w));
        self.combine(&inputs, &coefficients);
        Ok(())
    }

    /// Sets the model's parameters to Σ c_k θ_k over `units`, for any finite coefficients.
    fn combine(&mut self, units: &[&Unit], weights: &[f64]) {
        let (acc, out) = (&mut self.acc, &mut self.out);
        tch::no_grad(|| {
            for (p, param) in self.params.iter_mut().enumerate() {
                let dtype = param.dtype.expect("set when the units were loaded");
                let kind = kind_of(dtype).expect("checked when loaded");
                let merged = match &units[0].tensors[p] {
                    Held::Device(_) => {
                        let sources: Vec<Tensor> = units
                            .iter()
                            .map(|u| match &u.tensors[p] {
                                Held::Device(t) => t.shallow_clone(),
                                Held::Host(_) => unreachable!("one workspace, one device"),
                            })
                            .collect();
                        average_tensors(&sources, weights, kind)
                    }
                    Held::Host(_) => {
                        let numel = param.shape.iter().product::<usize>();
                        let size = dtype.size();
                        out.resize(numel * size, 0);
                        for start in (0..numel).step_by(CPU_BLOCK) {
                            let len = CPU_BLOCK.min(numel - start);
                            let bytes = start * size..(start + len) * size;
                            for (i, (unit, &w)) in units.iter().zip(weights).enumerate() {
                                let Held::Host(data) = &unit.tensors[p] else {
                                    unreachable!("one workspace, one device")
                                };
                                accumulate(&mut acc[..len], &data[bytes.clone()], dtype, w, i == 0);
                            }
                            encode(&acc[..len], dtype, &mut out[bytes]);
                        }
                        let shape: Vec<i64> = param.shape.iter().map(|&d| d as i64).collect();
                        Tensor::from_data_size(out, &shape, kind)
                    }
                };
                param.var.copy_(&merged);
            }
        });
    }
}
