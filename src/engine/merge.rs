//! Weighted parameter averaging of checkpoints with identical architectures.
//!
//! Inputs are memory-mapped and merged one tensor at a time: each tensor is accumulated on
//! the chosen device over all inputs, in a fixed (sorted) name order, then converted back to
//! the inputs' dtype. Peak memory is the output model plus one accumulator, not N models.
//!
//! The accumulator is wider than the inputs: fp32 for bf16/fp16 weights, fp64 for fp32
//! weights. Its rounding error then stays far below half a unit in the last place of the
//! output, so merging identical checkpoints returns them bit for bit, which an fp32
//! accumulator cannot promise for fp32 inputs (x/3 + x/3 + x/3 is not always x in fp32).

use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors, View};
use tch::{Device, Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("merge needs at least one checkpoint")]
    NoInputs,
    #[error("{inputs} checkpoints but {weights} weights")]
    WeightCount { inputs: usize, weights: usize },
    #[error("weight {index} is {value}: weights must be finite and non-negative")]
    BadWeight { index: usize, value: f64 },
    #[error("all weights are zero")]
    ZeroWeights,
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("{path} does not match {first}: {message}")]
    Mismatch { path: String, first: String, message: String },
    #[error("{path}: tensor {name} has unsupported dtype {dtype:?}")]
    Dtype { path: String, name: String, dtype: Dtype },
    #[error("writing {path}: {message}")]
    Write { path: String, message: String },
}

/// Checks that weights are finite, non-negative and not all zero, and scales them to sum 1.
pub fn normalize_weights(weights: &[f64]) -> Result<Vec<f64>, MergeError> {
    if weights.is_empty() {
        return Err(MergeError::NoInputs);
    }
    if let Some((index, &value)) = weights.iter().enumerate().find(|(_, w)| !(w.is_finite() && **w >= 0.0)) {
        return Err(MergeError::BadWeight { index, value });
    }
    let sum: f64 = weights.iter().sum();
    if sum == 0.0 {
        return Err(MergeError::ZeroWeights);
    }
    Ok(weights.iter().map(|w| w / sum).collect())
}

/// Equal weights: the paper's default.
pub fn uniform_weights(n: usize) -> Vec<f64> {
    vec![1.0 / n as f64; n]
}

/// Weights proportional to each partition's size in tokens.
pub fn token_weights(tokens: &[u64]) -> Result<Vec<f64>, MergeError> {
    normalize_weights(&tokens.iter().map(|&t| t as f64).collect::<Vec<_>>())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MergeStats {
    pub tensors: usize,
    /// Bytes of input read (all checkpoints together).
    pub bytes_read: u64,
    pub seconds: f64,
}

struct Input {
    path: PathBuf,
    map: Mmap,
}

/// Averages the `model.safetensors`-style files `inputs` with `weights` (normalised here)
/// on `device` and writes the result to `output` (through a temporary file and a rename).
pub fn merge_files(inputs: &[PathBuf], weights: &[f64], device: Device, output: &Path) -> Result<MergeStats, MergeError> {
    let started = std::time::Instant::now();
    if inputs.len() != weights.len() {
        return Err(MergeError::WeightCount { inputs: inputs.len(), weights: weights.len() });
    }
    let weights = normalize_weights(weights)?;
    let inputs: Vec<Input> = inputs.iter().map(|p| open(p)).collect::<Result<_, _>>()?;
    let parsed: Vec<SafeTensors> = inputs
        .iter()
        .map(|i| SafeTensors::deserialize(&i.map).map_err(|e| read_error(&i.path, e)))
        .collect::<Result<_, _>>()?;
    let mut names: Vec<String> = parsed[0].names().into_iter().cloned().collect();
    names.sort();
    check_compatible(&inputs, &parsed, &names)?;

    let mut merged: Vec<(String, Merged)> = Vec::with_capacity(names.len());
    let mut bytes_read = 0u64;
    tch::no_grad(|| -> Result<(), MergeError> {
        for name in &names {
            let mut acc: Option<Tensor> = None;
            let mut dtype = Dtype::F32;
            for ((input, st), &w) in inputs.iter().zip(&parsed).zip(&weights) {
                let view = st.tensor(name).map_err(|e| read_error(&input.path, e))?;
                dtype = view.dtype();
                bytes_read += view.data().len() as u64;
                let t = to_tensor(&input.path, name, &view)?.to_device(device);
                match &mut acc {
                    None => acc = Some(t.to_kind(accumulator(dtype)) * w),
                    Some(acc) => {
                        let w = Tensor::from(w).to_kind(accumulator(dtype)).to_device(device);
                        let _ = acc.addcmul_(&t, &w);
                    }
                }
            }
            let acc = acc.expect("at least one input");
            let out = acc.to_kind(kind_of(dtype).expect("checked")).to_device(Device::Cpu).contiguous();
            let shape = out.size().iter().map(|&d| d as usize).collect();
            let mut data = vec![0u8; out.numel() * out.kind().elt_size_in_bytes()];
            out.copy_data_u8(&mut data, out.numel());
            merged.push((name.clone(), Merged { dtype, shape, data }));
        }
        Ok(())
    })?;
    let partial = output.with_extension("partial");
    let write_err = |e: &dyn std::fmt::Display| MergeError::Write { path: output.display().to_string(), message: e.to_string() };
    safetensors::serialize_to_file(merged.iter().map(|(n, m)| (n.as_str(), m)), &None, &partial).map_err(|e| write_err(&e))?;
    std::fs::rename(&partial, output).map_err(|e| write_err(&e))?;
    Ok(MergeStats { tensors: names.len(), bytes_read, seconds: started.elapsed().as_secs_f64() })
}

fn open(path: &Path) -> Result<Input, MergeError> {
    let file = std::fs::File::open(path).map_err(|e| read_error(path, e))?;
    // SAFETY: checkpoints are immutable once written (they are replaced by rename, never
    // modified in place), so the mapping cannot change under us.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| read_error(path, e))?;
    Ok(Input { path: path.to_path_buf(), map })
}

fn read_error(path: &Path, e: impl std::fmt::Display) -> MergeError {
    MergeError::Read { path: path.display().to_string(), message: e.to_string() }
}

/// Every input must hold the same names with the same shapes and dtypes as the first.
fn check_compatible(inputs: &[Input], parsed: &[SafeTensors], names: &[String]) -> Result<(), MergeError> {
    let first = &parsed[0];
    for name in names {
        let view = first.tensor(name).map_err(|e| read_error(&inputs[0].path, e))?;
        if kind_of(view.dtype()).is_none() {
            return Err(MergeError::Dtype { path: inputs[0].path.display().to_string(), name: name.clone(), dtype: view.dtype() });
        }
    }
    for (input, st) in inputs.iter().zip(parsed).skip(1) {
        let mismatch = |message: String| MergeError::Mismatch {
            path: input.path.display().to_string(),
            first: inputs[0].path.display().to_string(),
            message,
        };
        if st.len() != first.len() {
            return Err(mismatch(format!("{} tensors, not {}", st.len(), first.len())));
        }
        for name in names {
            let a = first.tensor(name).expect("listed");
            let b = st.tensor(name).map_err(|_| mismatch(format!("no tensor {name}")))?;
            if a.shape() != b.shape() {
                return Err(mismatch(format!("{name} has shape {:?}, not {:?}", b.shape(), a.shape())));
            }
            if a.dtype() != b.dtype() {
                return Err(mismatch(format!("{name} is {:?}, not {:?}", b.dtype(), a.dtype())));
            }
        }
    }
    Ok(())
}

fn accumulator(dtype: Dtype) -> Kind {
    match dtype {
        Dtype::F32 | Dtype::F64 => Kind::Double,
        _ => Kind::Float,
    }
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F32 => Some(Kind::Float),
        Dtype::F16 => Some(Kind::Half),
        Dtype::BF16 => Some(Kind::BFloat16),
        Dtype::F64 => Some(Kind::Double),
        _ => None,
    }
}

/// A CPU tensor over the mapped bytes when they are aligned (no copy), else a copy.
fn to_tensor(path: &Path, name: &str, view: &safetensors::tensor::TensorView) -> Result<Tensor, MergeError> {
    let kind = kind_of(view.dtype()).expect("checked");
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    let data = view.data();
    if data.len() != view.shape().iter().product::<usize>() * kind.elt_size_in_bytes() {
        return Err(read_error(path, format!("tensor {name} has the wrong byte length")));
    }
    if (data.as_ptr() as usize) % kind.elt_size_in_bytes() == 0 {
        // SAFETY: the bytes are valid for the mapping's lifetime, which outlives this tensor
        // (it is consumed within the merge loop), and the length was checked above.
        Ok(unsafe { Tensor::from_blob(data.as_ptr(), &shape, &[], kind, Device::Cpu) })
    } else {
        Ok(Tensor::from_data_size(data, &shape, kind))
    }
}

struct Merged {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Merged {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}
