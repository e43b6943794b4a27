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

/// Bytes of memory free for tensors on `device`: the kernel's `MemAvailable` on the CPU, the
/// CUDA runtime's free memory on a GPU; `None` when it cannot be told.
pub fn free_memory(device: Device) -> Option<u64> {
    match device {
        Device::Cpu => {
            let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
            let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            // In a container the kernel reports the host's memory; the cgroup's limit is what
            // this process may actually use.
            let read = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok();
            let limit = read("memory.max")
                .zip(read("memory.current"))
                .and_then(|(max, current)| cgroup_headroom(&max, &current));
            Some(limit.map_or(kib << 10, |l| l.min(kib << 10)))
        }
        Device::Cuda(index) => cuda_free_memory(index),
        _ => None,
    }
}

/// `cudaMemGetInfo` from the CUDA runtime that libtorch's CUDA backend loaded.
fn cuda_free_memory(index: usize) -> Option<u64> {
    load_cuda_backend();
    type SetDevice = unsafe extern "C" fn(i32) -> i32;
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    // SAFETY: symbols looked up by name in the loaded CUDA runtime, called with their
    // documented signatures; a missing symbol gives a null pointer, checked first.
    unsafe {
        let set = libc::dlsym(libc::RTLD_DEFAULT, c"cudaSetDevice".as_ptr());
        let info = libc::dlsym(libc::RTLD_DEFAULT, c"cudaMemGetInfo".as_ptr());
        if set.is_null() || info.is_null() {
            return None;
        }
        let set: SetDevice = std::mem::transmute(set);
        let info: MemGetInfo = std::mem::transmute(info);
        let (mut free, mut total) = (0usize, 0usize);
        (set(index as i32) == 0 && info(&mut free, &mut total) == 0).then_some(free as u64)
    }
}

/// What a cgroup (v2) still allows: `memory.max` less `memory.current`; `None` without a
/// limit (`max`) or when the files do not parse.
fn cgroup_headroom(max: &str, current: &str) -> Option<u64> {
    let max: u64 = max.trim().parse().ok()?;
    let current: u64 = current.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_limit_bounds_the_memory_and_no_limit_does_not() {
        assert_eq!(cgroup_headroom("max\n", "123\n"), None);
        assert_eq!(
            cgroup_headroom("1073741824\n", "73741824\n"),
            Some(1_000_000_000)
        );
        assert_eq!(cgroup_headroom("100\n", "200\n"), Some(0));
        assert_eq!(cgroup_headroom("", "1"), None);
    }
}
