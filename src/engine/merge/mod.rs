//! Weighted parameter averaging of checkpoints with identical architectures.
//!
//! Inputs are merged one tensor at a time, in a fixed (sorted) name order: each tensor is
//! accumulated over all inputs on the chosen device, then converted back to the inputs'
//! dtype. Peak memory is the output model plus one tensor per input on an accelerator, and
//! the output plus a few cache-sized blocks on the CPU, never N models.
//!
//! The accumulator is fp64, wider than any input. Its rounding error then stays far below
//! half a unit in the last place of the output, so merging identical checkpoints returns them
//! bit for bit, which an fp32 accumulator cannot promise for fp32 inputs (x/3 + x/3 + x/3 is
//! not always x in fp32). On the CPU the sum runs in plain loops over cache-sized blocks; on an
//! accelerator it runs in libtorch over whole tensors.

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use safetensors::{Dtype, View};
use serde::Deserialize;
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
    Mismatch {
        path: String,
        first: String,
        message: String,
    },
    #[error("{path}: tensor {name} has unsupported dtype {dtype:?}")]
    Dtype {
        path: String,
        name: String,
        dtype: Dtype,
    },
    #[error("writing {path}: {message}")]
    Write { path: String, message: String },
    #[error(transparent)]
    Checkpoint(#[from] super::checkpoint::CheckpointError),
}

/// Checks that weights are finite, non-negative and not all zero, and scales them to sum 1.
pub fn normalize_weights(weights: &[f64]) -> Result<Vec<f64>, MergeError> {
    if weights.is_empty() {
        return Err(MergeError::NoInputs);
    }
    if let Some((index, &value)) = weights
        .iter()
        .enumerate()
        .find(|(_, w)| !(w.is_finite() && **w >= 0.0))
    {
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

/// One safetensors file: its header, parsed, and the open file for positioned reads.
struct Input {
    path: PathBuf,
    file: File,
    tensors: BTreeMap<String, TensorInfo>,
    /// Where the data section starts (after the 8-byte length and the JSON header).
    data_start: u64,
}

#[derive(Deserialize, Clone, PartialEq)]
struct TensorInfo {
    dtype: Dtype,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

impl Input {
    fn open(path: &Path) -> Result<Input, MergeError> {
        let err = |e: &dyn std::fmt::Display| read_error(path, e);
        let file = File::open(path).map_err(|e| err(&e))?;
        let file_len = file.metadata().map_err(|e| err(&e))?.len();
        let mut len = [0u8; 8];
        file.read_exact_at(&mut len, 0).map_err(|e| err(&e))?;
        let header_len = u64::from_le_bytes(len);
        if header_len > (100 << 20) || 8 + header_len > file_len {
            return Err(err(&"not a safetensors file (bad header length)"));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact_at(&mut header, 8).map_err(|e| err(&e))?;
        let mut entries: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| err(&format!("not a safetensors header: {e}")))?;
        entries.remove("__metadata__");
        let data_start = 8 + header_len;
        let mut tensors = BTreeMap::new();
        for (name, entry) in entries {
            let info: TensorInfo =
                serde_json::from_value(entry).map_err(|e| err(&format!("tensor {name}: {e}")))?;
            let (begin, end) = info.data_offsets;
            let bytes = info.shape.iter().product::<usize>() as u64 * info.dtype.size() as u64;
            if end < begin || end - begin != bytes || data_start + end > file_len {
                return Err(err(&format!(
                    "tensor {name}: data offsets do not match its shape and the file"
                )));
            }
            tensors.insert(name, info);
        }
        Ok(Input {
            path: path.to_path_buf(),
            file,
            tensors,
            data_start,
        })
    }

    /// Reads `out.len()` bytes of tensor `info` starting `offset` bytes into its data.
    fn read(&self, info: &TensorInfo, offset: u64, out: &mut [u8]) -> Result<(), MergeError> {
        let at = self.data_start + info.data_offsets.0 + offset;
        self.file
            .read_exact_at(out, at)
            .map_err(|e| read_error(&self.path, e))
    }
}

/// Averages the `model.safetensors`-style files `inputs` with `weights` (normalised here)
/// on `device` and writes the result to `output` (through a temporary file and a rename).
pub fn merge_files(
    inputs: &[PathBuf],
    weights: &[f64],
    device: Device,
    output: &Path,
) -> Result<MergeStats, MergeError> {
    let started = std::time::Instant::now();
    if inputs.len() != weights.len() {
        return Err(MergeError::WeightCount {
            inputs: inputs.len(),
            weights: weights.len(),
        });
    }
    let weights = normalize_weights(weights)?;
    let inputs: Vec<Input> = inputs
        .iter()
        .map(|p| Input::open(p))
        .collect::<Result<_, _>>()?;
    check_compatible(&inputs)?;

    let mut merged: Vec<(String, Bytes)> = Vec::with_capacity(inputs[0].tensors.len());
    let mut bytes_read = 0u64;
    for (name, info) in &inputs[0].tensors {
        let bytes = info.data_offsets.1 - info.data_offsets.0;
        bytes_read += bytes * inputs.len() as u64;
        let data = if device == Device::Cpu {
            average_cpu(&inputs, name, &weights)?
        } else {
            let mut sources = Vec::with_capacity(inputs.len());
            for input in &inputs {
                let mut data = vec![0u8; bytes as usize];
                input.read(info, 0, &mut data)?;
                let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
                sources.push(
                    Tensor::from_data_size(&data, &shape, kind_of(info.dtype).expect("checked"))
                        .to_device(device),
                );
            }
            let kind = kind_of(info.dtype).expect("checked");
            to_bytes(&tch::no_grad(|| average_tensors(&sources, &weights, kind)))
        };
        merged.push((
            name.clone(),
            Bytes {
                dtype: info.dtype,
                shape: info.shape.clone(),
                data,
            },
        ));
    }
    let partial = output.with_extension("partial");
    let write_err = |e: &dyn std::fmt::Display| MergeError::Write {
        path: output.display().to_string(),
        message: e.to_string(),
    };
    safetensors::serialize_to_file(merged.iter().map(|(n, m)| (n.as_str(), m)), &None, &partial)
        .map_err(|e| write_err(&e))?;
    std::fs::rename(&partial, output).map_err(|e| write_err(&e))?;
    Ok(MergeStats {
        tensors: merged.len(),
        bytes_read,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Merges model directories: weights averaged, `config.json` and the side files (tokenizer,
/// imported config) taken from the first (every config must be equal).
pub fn merge_model_dirs(
    models: &[PathBuf],
    weights: &[f64],
    device: Device,
    out: &Path,
) -> Result<MergeStats, MergeError> {
    super::checkpoint::fresh_dir(out, |out| merge_into(models, weights, device, out))
}

fn merge_into(
    models: &[PathBuf],
    weights: &[f64],
    device: Device,
    out: &Path,
) -> Result<MergeStats, MergeError> {
    use super::checkpoint::{WEIGHTS_FILE, copy_side_files, read_config, side_files, write_config};
    let first = models.first().ok_or(MergeError::NoInputs)?;
    let config = read_config(first)?;
    for dir in &models[1..] {
        if read_config(dir)? != config {
            return Err(MergeError::Mismatch {
                path: dir.display().to_string(),
                first: first.display().to_string(),
                message: "config.json differs".into(),
            });
        }
    }
    let write_err = |e: std::io::Error| MergeError::Write {
        path: out.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(out).map_err(write_err)?;
    let inputs: Vec<PathBuf> = models.iter().map(|d| d.join(WEIGHTS_FILE)).collect();
    let stats = merge_files(&inputs, weights, device, &out.join(WEIGHTS_FILE))?;
    write_config(out, &config)?;
    copy_side_files(&side_files(first), out)?;
    Ok(stats)
}

fn read_error(path: &Path, e: impl std::fmt::Display) -> MergeError {
    MergeError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Every input must hold the same names with the same shapes and dtypes as the first, and
/// every dtype must be a floating-point one.
fn check_compatible(inputs: &[Input]) -> Result<(), MergeError> {
    let first = &inputs[0];
    for (name, info) in &first.tensors {
        if kind_of(info.dtype).is_none() {
            return Err(MergeError::Dtype {
                path: first.path.display().to_string(),
                name: name.clone(),
                dtype: info.dtype,
            });
        }
    }
    for input in &inputs[1..] {
        let mismatch = |message: String| MergeError::Mismatch {
            path: input.path.display().to_string(),
            first: first.path.display().to_string(),
            message,
        };
        if input.tensors.len() != first.tensors.len() {
            return Err(mismatch(format!(
                "{} tensors, not {}",
                input.tensors.len(),
                first.tensors.len()
            )));
        }
        for (name, a) in &first.tensors {
            let b = input
                .tensors
                .get(name)
                .ok_or_else(|| mismatch(format!("no tensor {name}")))?;
            if a.shape != b.shape {
                return Err(mismatch(format!(
                    "{name} has shape {:?}, not {:?}",
                    b.shape, a.shape
                )));
            }
            if a.dtype != b.dtype {
                return Err(mismatch(format!(
                    "{name} is {:?}, not {:?}",
                    b.dtype, a.dtype
                )));
            }
        }
    }
    Ok(())
}

pub(super) fn kind_of(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F32 => Some(Kind::Float),
        Dtype::F16 => Some(Kind::Half),
        Dtype::BF16 => Some(Kind::BFloat16),
        Dtype::F64 => Some(Kind::Double),
        _ => None,
    }
}

/// Elements per block on the CPU: the fp64 accumulator (256 KiB) and the read buffer stay
/// in cache while every input streams through once.
pub(super) const CPU_BLOCK: usize = 1 << 15;

/// Tensor `name` of every input, weighted and summed in fp64 block by block, as raw bytes.
fn average_cpu(inputs: &[Input], name: &str, weights: &[f64]) -> Result<Vec<u8>, MergeError> {
    let info = &inputs[0].tensors[name];
    let size = info.dtype.size();
    let numel = info.shape.iter().product::<usize>();
    let mut out = vec![0u8; numel * size];
    let mut acc = vec![0f64; CPU_BLOCK.min(numel)];
    let mut buffer = vec![0u8; acc.len() * size];
    for start in (0..numel).step_by(CPU_BLOCK) {
        let len = CPU_BLOCK.min(numel - start);
        let (acc, buffer) = (&mut acc[..len], &mut buffer[..len * size]);
        for (i, (input, &w)) in inputs.iter().zip(weights).enumerate() {
            input.read(&input.tensors[name], (start * size) as u64, buffer)?;
            accumulate(acc, buffer, info.dtype, w, i == 0);
        }
        encode(
            acc,
            info.dtype,
            &mut out[start * size..(start + len) * size],
        );
    }
    Ok(out)
}

/// `acc = w * x` (when `first`) or `acc += w * x`, for `x` the decoded `bytes`. Assigning
/// instead of adding to zero keeps the sign of negative zeros.
pub(super) fn accumulate(acc: &mut [f64], bytes: &[u8], dtype: Dtype, w: f64, first: bool) {
    fn apply<T: Copy>(
        acc: &mut [f64],
        xs: impl Iterator<Item = T>,
        to_f64: impl Fn(T) -> f64,
        w: f64,
        first: bool,
    ) {
        if first {
            acc.iter_mut().zip(xs).for_each(|(a, x)| *a = w * to_f64(x));
        } else {
            acc.iter_mut()
                .zip(xs)
                .for_each(|(a, x)| *a += w * to_f64(x));
        }
    }
    match dtype {
        Dtype::F32 => apply(
            acc,
            bytes.chunks_exact(4),
            |b| f32::from_le_bytes(b.try_into().unwrap()) as f64,
            w,
            first,
        ),
        Dtype::F64 => apply(
            acc,
            bytes.chunks_exact(8),
            |b| f64::from_le_bytes(b.try_into().unwrap()),
            w,
            first,
        ),
        Dtype::BF16 => apply(
            acc,
            bytes.chunks_exact(2),
            |b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64(),
            w,
            first,
        ),
        Dtype::F16 => apply(
            acc,
            bytes.chunks_exact(2),
            |b| half::f16::from_le_bytes([b[0], b[1]]).to_f64(),
            w,
            first,
        ),
        other => unreachable!("dtype {other:?} was checked"),
    }
}

/// Rounds to the nearest representable value (ties to even); 16-bit types through fp32, as
/// libtorch casts them.
pub(super) fn encode(values: &[f64], dtype: Dtype, out: &mut [u8]) {
    let pairs = values.iter();
    match dtype {
        Dtype::F64 => pairs
            .zip(out.chunks_exact_mut(8))
            .for_each(|(v, o)| o.copy_from_slice(&v.to_le_bytes())),
        Dtype::F32 => pairs
            .zip(out.chunks_exact_mut(4))
            .for_each(|(v, o)| o.copy_from_slice(&(*v as f32).to_le_bytes())),
        Dtype::BF16 => pairs
            .zip(out.chunks_exact_mut(2))
            .for_each(|(v, o)| o.copy_from_slice(&half::bf16::from_f32(*v as f32).to_le_bytes())),
        Dtype::F16 => pairs
            .zip(out.chunks_exact_mut(2))
            .for_each(|(v, o)| o.copy_from_slice(&half::f16::from_f32(*v as f32).to_le_bytes())),
        other => unreachable!("dtype {other:?} was checked"),
    }
}

/// The same sum with libtorch on an accelerator, whole tensors at once, in fp64; the result
/// is rounded to `kind` and stays on the sources' device.
pub(super) fn average_tensors(sources: &[Tensor], weights: &[f64], kind: Kind) -> Tensor {
    let acc_kind = Kind::Double;
    let device = sources[0].device();
    let mut acc = sources[0].to_kind(acc_kind) * weights[0];
    for (source, &w) in sources.iter().zip(weights).skip(1) {
        let w = Tensor::from(w).to_kind(acc_kind).to_device(device);
        let _ = acc.addcmul_(&source.to_kind(acc_kind), &w);
    }
    acc.to_kind(kind)
}

/// A tensor's raw bytes, copied to the host.
fn to_bytes(tensor: &Tensor) -> Vec<u8> {
    let out = tensor.to_device(Device::Cpu).contiguous();
    let mut data = vec![0u8; out.numel() * out.kind().elt_size_in_bytes()];
    out.copy_data_u8(&mut data, out.numel());
    data
}

/// A tensor's bytes, for the safetensors writer.
pub(super) struct Bytes {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl View for &Bytes {
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

#[cfg(test)]
mod tests;
