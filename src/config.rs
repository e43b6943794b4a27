//! Typed settings from `config/default.toml` (or the file named by `MIXPOOL_CONFIG`),
//! overridden by environment variables: `MIXPOOL_<KEY>` for a key of `[engine]` or
//! `[service]` (`MIXPOOL_LEASE_SECONDS`), `MIXPOOL_S3_<KEY>` for `[s3]`, and `DATABASE_URL`.
//! Command-line flags override both; clap applies those.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub engine: EngineConfig,
    pub service: ServiceConfig,
    /// For `s3://` stores.
    #[serde(default)]
    pub s3: crate::store::S3Config,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub database_url: String,
    pub listen: String,
    pub data: String,
    pub store: String,
    pub max_upload_mb: u64,
    pub max_wait_seconds: u64,
    pub lease_seconds: u64,
    /// Most mixtures one sweep may ask for.
    #[serde(default = "defaults::sweep_max_mixtures")]
    pub sweep_max_mixtures: u64,
    /// Mixtures per sweep shard (one `sweep` job each).
    #[serde(default = "defaults::sweep_shard_mixtures")]
    pub sweep_shard_mixtures: u64,
    /// Seconds `serve` gives open requests and event streams to end after a stop signal.
    #[serde(default = "defaults::shutdown_seconds")]
    pub shutdown_seconds: u64,
    /// Whether GET requests need no token; writes always need one.
    #[serde(default = "defaults::open_reads")]
    pub open_reads: bool,
    /// Whether `serve` runs one worker in its process.
    #[serde(default = "defaults::worker")]
    pub worker: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    pub device: String,
    pub threads: i32,
    /// Memory for unit models kept resident by a worker, in MiB; 0 for a safe share of the
    /// device's memory.
    #[serde(default)]
    pub resident_mb: u64,
    /// Disk a worker may fill with the model weights it fetched (under DATA/cache), in MiB;
    /// 0 keeps none, and no unit models resident between jobs.
    #[serde(default = "defaults::cache_mb")]
    pub cache_mb: u64,
}

/// Settings added after the first release, so that older settings files still read.
mod defaults {
    pub fn sweep_max_mixtures() -> u64 {
        10_000
    }
    pub fn sweep_shard_mixtures() -> u64 {
        32
    }
    pub fn shutdown_seconds() -> u64 {
        10
    }
    pub fn open_reads() -> bool {
        true
    }
    pub fn worker() -> bool {
        true
    }
    pub fn cache_mb() -> u64 {
        10_240
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            engine: EngineConfig {
                device: "auto".into(),
                threads: 0,
                resident_mb: 0,
                cache_mb: defaults::cache_mb(),
            },
            service: ServiceConfig {
                database_url: "postgres://postgres@127.0.0.1:5432/mixpool".into(),
                listen: "127.0.0.1:8080".into(),
                data: "mixpool-data".into(),
                store: String::new(),
                max_upload_mb: 1024,
                max_wait_seconds: 600,
                lease_seconds: 60,
                sweep_max_mixtures: defaults::sweep_max_mixtures(),
                sweep_shard_mixtures: defaults::sweep_shard_mixtures(),
                shutdown_seconds: defaults::shutdown_seconds(),
                open_reads: defaults::open_reads(),
                worker: defaults::worker(),
            },
            s3: Default::default(),
        }
    }
}

impl Config {
    /// Reads `MIXPOOL_CONFIG` when set, else `config/default.toml` when it exists, else the
    /// built-in defaults (which equal that file's); then applies the environment.
    pub fn load() -> Result<Self> {
        let path = std::env::var_os("MIXPOOL_CONFIG").map(PathBuf::from);
        let path = match path {
            Some(path) => Some(path),
            None if Path::new("config/default.toml").exists() => {
                Some(PathBuf::from("config/default.toml"))
            }
            None => None,
        };
        let mut table = match &path {
            Some(path) => read_table(path)?,
            None => toml::Table::try_from(Config::default())?,
        };
        apply_env(&mut table, |name| std::env::var(name).ok())?;
        let from = path.map_or("the built-in settings".into(), |p| p.display().to_string());
        parse(table, &from)
    }

    /// A settings file alone, without the environment.
    pub fn read(path: &Path) -> Result<Self> {
        parse(read_table(path)?, &path.display().to_string())
    }
}

fn read_table(path: &Path) -> Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{}: invalid settings", path.display()))
}

fn parse(table: toml::Table, from: &str) -> Result<Config> {
    toml::Value::Table(table)
        .try_into()
        .with_context(|| format!("{from}: invalid settings"))
}

const S3_KEYS: &[&str] = &["endpoint", "region", "access_key_id", "secret_access_key"];

/// Overrides settings from variables (see the module's documentation); a number that does
/// not parse is an error naming its variable.
fn apply_env(table: &mut toml::Table, var: impl Fn(&str) -> Option<String>) -> Result<()> {
    let defaults = toml::Table::try_from(Config::default())?;
    let mut set = |section: &str, key: &str, value: toml::Value| {
        let entry = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(Default::default()));
        if let toml::Value::Table(t) = entry {
            t.insert(key.to_string(), value);
        }
    };
    for section in ["engine", "service"] {
        for (key, default) in defaults[section].as_table().into_iter().flatten() {
            let name = format!("MIXPOOL_{}", key.to_uppercase());
            let Some(value) = var(&name) else { continue };
            let value = match default {
                toml::Value::Integer(_) => toml::Value::Integer(
                    value
                        .trim()
                        .parse()
                        .with_context(|| format!("{name}={value:?} is not a whole number"))?,
                ),
                toml::Value::Boolean(_) => toml::Value::Boolean(
                    value
                        .trim()
                        .parse()
                        .with_context(|| format!("{name}={value:?} is not true or false"))?,
                ),
                _ => toml::Value::String(value),
            };
            set(section, key, value);
        }
    }
    for key in S3_KEYS {
        if let Some(value) = var(&format!("MIXPOOL_S3_{}", key.to_uppercase())) {
            set("s3", key, toml::Value::String(value));
        }
    }
    if let Some(url) = var("DATABASE_URL") {
        set("service", "database_url", toml::Value::String(url));
    }
    Ok(())
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
    fn variables_override_the_file() {
        let mut table = toml::Table::try_from(Config::default()).unwrap();
        let vars = |name: &str| match name {
            "MIXPOOL_LEASE_SECONDS" => Some("7".to_string()),
            "MIXPOOL_DEVICE" => Some("cpu".to_string()),
            "MIXPOOL_OPEN_READS" => Some("false".to_string()),
            "MIXPOOL_S3_ENDPOINT" => Some("http://127.0.0.1:9000".to_string()),
            "DATABASE_URL" => Some("postgres://db/x".to_string()),
            _ => None,
        };
        apply_env(&mut table, vars).unwrap();
        let config = parse(table, "test").unwrap();
        assert_eq!(config.service.lease_seconds, 7);
        assert_eq!(config.engine.device, "cpu");
        assert!(!config.service.open_reads);
        assert_eq!(config.s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(config.service.database_url, "postgres://db/x");
        assert_eq!(config.service.listen, Config::default().service.listen);

        let mut table = toml::Table::try_from(Config::default()).unwrap();
        let bad = |name: &str| (name == "MIXPOOL_MAX_UPLOAD_MB").then(|| "lots".to_string());
        let err = format!("{:#}", apply_env(&mut table, bad).unwrap_err());
        assert!(err.contains("MIXPOOL_MAX_UPLOAD_MB"), "{err}");
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
