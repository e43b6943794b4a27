//! Typed settings from `config/default.toml` (or the file named by `MIXPOOL_CONFIG`).
//! Command-line flags and `MIXPOOL_*` variables override them; clap applies those.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub engine: EngineConfig,
    pub service: ServiceConfig,
    /// For `s3://` stores.
    #[serde(default)]
    pub s3: crate::store::S3Config,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub database_url: String,
    pub listen: String,
    pub data: String,
    pub store: String,
    pub max_upload_mb: u64,
    pub max_wait_seconds: u64,
    pub lease_seconds: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    pub device: String,
    pub threads: i32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            engine: EngineConfig {
                device: "auto".into(),
                threads: 0,
            },
            service: ServiceConfig {
                database_url: "postgres://postgres@127.0.0.1:5432/mixpool".into(),
                listen: "127.0.0.1:8080".into(),
                data: "mixpool-data".into(),
                store: String::new(),
                max_upload_mb: 1024,
                max_wait_seconds: 600,
                lease_seconds: 60,
            },
            s3: Default::default(),
        }
    }
}

impl Config {
    /// Reads `MIXPOOL_CONFIG` when set, else `config/default.toml` when it exists, else the
    /// built-in defaults (which equal that file's).
    pub fn load() -> Result<Self> {
        let path = std::env::var_os("MIXPOOL_CONFIG").map(PathBuf::from);
        match path {
            Some(path) => Self::read(&path),
            None if Path::new("config/default.toml").exists() => {
                Self::read(Path::new("config/default.toml"))
            }
            None => Ok(Config::default()),
        }
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{}: invalid settings", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_equals_the_built_in_defaults() {
        let shipped =
            Config::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml"))
                .unwrap();
        assert_eq!(shipped, Config::default());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[engine]\ndevice = \"cpu\"\nthreads = 1\ngpu = true\n",
        )
        .unwrap();
        let err = format!("{:#}", Config::read(&path).unwrap_err());
        assert!(err.contains("gpu"), "{err}");
    }
}
