//! Which device the engine runs on: `auto` (CUDA when present, else CPU), `cpu`, `cuda:N`.

use std::sync::Once;

use tch::{Cuda, Device};

/// Parses a device name. `auto` picks CUDA device 0 when libtorch's CUDA backend loads and a
/// GPU is visible.
pub fn parse(name: &str) -> Result<Device, String> {
    load_cuda_backend();
    match name {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => parse("cuda:0"),
        _ => {
            let index = name
                .strip_prefix("cuda:")
                .and_then(|i| i.parse::<usize>().ok())
                .ok_or_else(|| format!("unknown device {name:?}: use auto, cpu or cuda:N"))?;
            match Cuda::device_count() as usize {
                n if index < n => Ok(Device::Cuda(index)),
                n => Err(format!(
                    "device {name} not available: {n} CUDA device(s) visible"
                )),
            }
        }
    }
}

/// rustc links with `--as-needed`, which drops `libtorch_cuda.so` because no symbol of it is
/// referenced, so CUDA would look absent. Loading it by hand registers the CUDA kernels where
/// the library and its CUDA dependencies exist, and fails quietly where they do not (CPU).
pub fn load_cuda_backend() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let name = c"libtorch_cuda.so";
        // SAFETY: dlopen with a valid C string; the handle is deliberately never closed.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            tracing::debug!("libtorch_cuda.so not loaded: running on the CPU only");
        }
    });
}

pub fn name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Cpu => "cpu".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}
