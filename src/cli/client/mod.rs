//! Client verbs: the command line talking to a running server (`--url`, or `MIXPOOL_URL`,
//! default http://127.0.0.1:8080). Errors print the server's message and exit non-zero.

mod api;
mod jobs;
mod pool;
mod register;
mod score;
mod search;
mod sweep;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

pub use api::{Api, Progress};
pub use jobs::{JobsCommand, jobs};
pub use pool::{EvalSetsCommand, ListArgs, PartitionsCommand, eval_sets, partitions, recipes};
pub use score::{CheckArgs, ScoreArgs, check, score};
pub use search::{SearchArgs, search};
pub use sweep::{SweepArgs, ValidateArgs, sweep, validate};

#[derive(Args, Clone)]
pub struct Server {
    /// The server's address.
    #[arg(long, env = "MIXPOOL_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An API token (`mixpool token create`): writes need one, reads where the server
    /// closes them.
    #[arg(long, env = "MIXPOOL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl Server {
    /// An HTTP client that sends the token, if any, with every request.
    pub fn http(&self) -> Result<reqwest::Client> {
        api::http_client(self.token.as_deref())
    }
}

/// The base and recipe whose unit models a verb uses.
#[derive(Args, Clone)]
pub struct Models {
    /// The base (default: the newest).
    #[arg(long)]
    pub base: Option<String>,
    /// The recipe (default: the newest).
    #[arg(long)]
    pub recipe: Option<String>,
}

impl Models {
    /// The ones given, as `(key, value)` for a request body or query.
    pub fn given(&self) -> Vec<(&'static str, String)> {
        [("base", &self.base), ("recipe", &self.recipe)]
            .into_iter()
            .filter_map(|(key, value)| value.clone().map(|v| (key, v)))
            .collect()
    }

    /// Sets the ones given in a JSON request.
    pub fn apply(&self, request: &mut Value) {
        for (key, value) in self.given() {
            request[key] = Value::String(value);
        }
    }
}

#[derive(Subcommand)]
pub enum BasesCommand {
    /// Import a Hugging Face checkpoint directory (config.json, model.safetensors or shards,
    /// tokenizer.json) as a base.
    Import(ImportArgs),
    /// The bases, newest first.
    Ls(ListArgs),
}

#[derive(Args)]
pub struct ImportArgs {
    /// The Hugging Face checkpoint directory.
    pub dir: PathBuf,
    /// The base's name (default: the directory's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Refuse every config field the engine does not read (beyond a few known harmless
    /// ones), instead of accepting those at their default behaviour.
    #[arg(long)]
    pub strict: bool,
    #[command(flatten)]
    pub server: Server,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Comma-separated partition names or ids: their unit models are merged.
    #[arg(long)]
    pub partitions: String,
    /// Comma-separated weights, one per partition (default: uniform).
    #[arg(long)]
    pub weights: Option<String>,
    /// uniform or tokens.
    #[arg(long)]
    pub weighting: Option<String>,
    #[command(flatten)]
    pub models: Models,
    /// The Hugging Face directory to write (must not exist yet).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub server: Server,
}

pub async fn bases(command: BasesCommand) -> Result<()> {
    match command {
        BasesCommand::Import(a) => import(a).await,
        BasesCommand::Ls(a) => pool::bases(a).await,
    }
}

async fn import(a: ImportArgs) -> Result<()> {
    if !a.dir.join("config.json").is_file() {
        bail!(
            "{} has no config.json: name a Hugging Face checkpoint directory",
            a.dir.display()
        );
    }
    let name = match a.name {
        Some(name) => name,
        None => a
            .dir
            .canonicalize()?
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .context("name the base with --name")?,
    };
    api::Api::new(&a.server)?.can_write().await?;
    let scratch = tempfile::tempdir()?;
    let tar_path = scratch.path().join("checkpoint.tar");
    let (dir, path) = (a.dir.clone(), tar_path.clone());
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut tar = tar::Builder::new(std::fs::File::create(&path)?);
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_file() {
                tar.append_path_with_name(&path, path.file_name().unwrap())?;
            }
        }
        tar.finish()?;
        Ok(())
    })
    .await??;
    let file = tokio::fs::File::open(&tar_path).await?;
    let response = a
        .server
        .http()?
        .post(format!(
            "{}/v1/bases/import",
            a.server.url.trim_end_matches('/')
        ))
        .query(&[("name", name.as_str()), ("strict", &a.strict.to_string())])
        .header("content-type", "application/x-tar")
        .body(file)
        .send()
        .await
        .with_context(|| format!("no answer from {}", a.server.url))?;
    print_answer(response).await
}

pub async fn export(a: ExportArgs) -> Result<()> {
    if a.out.exists() {
        bail!("{} exists: choose a new directory", a.out.display());
    }
    let mut query = vec![("partitions", a.partitions.clone())];
    for (key, value) in [("weights", &a.weights), ("weighting", &a.weighting)] {
        if let Some(v) = value {
            query.push((key, v.clone()));
        }
    }
    query.extend(a.models.given());
    // A worker merges the export; until it is stored the server answers 202 with the job.
    let client = a.server.http()?;
    let mut response = loop {
        let response = client
            .get(format!(
                "{}/v1/mixtures/export",
                a.server.url.trim_end_matches('/')
            ))
            .query(&query)
            .send()
            .await
            .with_context(|| format!("no answer from {}", a.server.url))?;
        if response.status() != reqwest::StatusCode::ACCEPTED {
            break response;
        }
        let pending: Value = response.json().await.unwrap_or(Value::Null);
        if let Some(message) = pending["message"].as_str() {
            // Unit models train first; the server answers at once, so ask again later.
            eprintln!("{message}");
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            continue;
        }
        eprintln!(
            "merging: export job {} {}",
            pending["job"]["id"].as_str().unwrap_or("?"),
            pending["job"]["state"].as_str().unwrap_or("queued")
        );
    };
    if !response.status().is_success() {
        return print_answer(response).await;
    }
    let parent = a
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let scratch = tempfile::tempdir_in(parent)?;
    let tar_path = scratch.path().join("model.tar");
    let mut file = tokio::fs::File::create(&tar_path).await?;
    while let Some(chunk) = response.chunk().await? {
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await?;
    }
    let unpacked = scratch.path().join("unpacked");
    let path = tar_path.clone();
    let dest = unpacked.clone();
    tokio::task::spawn_blocking(move || tar::Archive::new(std::fs::File::open(path)?).unpack(dest))
        .await??;
    std::fs::rename(unpacked.join("model"), &a.out)?;
    println!("{}", serde_json::json!({ "exported": a.out }));
    Ok(())
}

/// Prints a JSON answer; a 4xx or 5xx is an error carrying the server's message.
async fn print_answer(response: reqwest::Response) -> Result<()> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{}", api::refusal(status, &body));
    }
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(())
}
