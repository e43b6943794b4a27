//! `mixpool partitions add|ls|rm`, `eval-sets add|ls`, `bases ls`, `recipes ls`: the pool
//! as tables (or `--json`), uploads with a progress bar per file.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use futures::TryStreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::Value;

use super::Server;
use super::api::{Api, refusal, table};

#[derive(Subcommand)]
pub enum PartitionsCommand {
    /// Upload JSONL or text files (gzip or zstd too) or Parquet files, one partition each;
    /// each queues its unit model for the default base and recipe unless --no-train.
    Add(AddArgs),
    /// Register a partition from objects already in the pool's store (JSONL or text
    /// shards, Parquet files), read in place by a worker; queues its unit model unless
    /// --no-train.
    Register(super::register::RegisterArgs),
    /// The partitions, newest first, with the state of their unit models.
    Ls(ListArgs),
    /// Delete partitions (and their unit models) no score or sweep uses.
    Rm {
        /// Partition names or ids.
        #[arg(required = true)]
        partitions: Vec<String>,
        #[command(flatten)]
        server: Server,
    },
}

#[derive(Subcommand)]
pub enum EvalSetsCommand {
    /// Upload evaluation sets (JSONL with a `text` and an optional `domain` per line).
    Add(AddArgs),
    /// Register an evaluation set from objects already in the pool's store.
    Register(super::register::RegisterArgs),
    /// The evaluation sets, newest first.
    Ls(ListArgs),
}

#[derive(Args)]
pub struct AddArgs {
    /// The files to upload.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The name (one file only; default: the file's name without its extensions).
    #[arg(long)]
    pub name: Option<String>,
    /// The partitions' domain (partitions only).
    #[arg(long)]
    pub domain: Option<String>,
    /// Comma-separated tags (partitions only).
    #[arg(long)]
    pub tags: Option<String>,
    /// Parquet files: the column holding the text (default text).
    #[arg(long)]
    pub text_field: Option<String>,
    /// Store the partitions without queueing their unit models.
    #[arg(long)]
    pub no_train: bool,
    /// Wait until the unit models queued by the uploads are trained (progress on stderr).
    #[arg(long, conflicts_with = "no_train")]
    pub wait: bool,
    /// Print the server's answers as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print only the name each file is stored under, one per line: an existing dataset's
    /// name when the same bytes were already there (for scripts).
    #[arg(long, conflicts_with = "json")]
    pub print_names: bool,
    #[command(flatten)]
    pub server: Server,
}

#[derive(Args)]
pub struct ListArgs {
    /// At most this many rows.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: Server,
}

pub async fn partitions(command: PartitionsCommand) -> Result<()> {
    match command {
        PartitionsCommand::Add(a) => add(a, "/v1/partitions").await,
        PartitionsCommand::Register(a) => super::register::register(a, "/v1/partitions").await,
        PartitionsCommand::Ls(a) => list_partitions(a).await,
        PartitionsCommand::Rm { partitions, server } => {
            let api = Api::new(&server)?;
            for p in partitions {
                let (_, answer) = api
                    .send(Method::DELETE, &format!("/v1/partitions/{p}"), None)
                    .await?;
                let models = answer["models"].as_array().map_or(0, Vec::len);
                println!("deleted {p} and {models} unit model(s)");
            }
            Ok(())
        }
    }
}

pub async fn eval_sets(command: EvalSetsCommand) -> Result<()> {
    match command {
        EvalSetsCommand::Add(a) => add(a, "/v1/eval-sets").await,
        EvalSetsCommand::Register(a) => {
            if a.domain.is_some() || a.no_train {
                anyhow::bail!("--domain and --no-train apply to partitions, not eval sets");
            }
            super::register::register(a, "/v1/eval-sets").await
        }
        EvalSetsCommand::Ls(a) => {
            let header = ["name", "documents", "bytes", "created"];
            print_list(&a, "/v1/eval-sets", &header, |r| {
                vec![
                    text(&r["name"]),
                    text(&r["documents"]),
                    bytes(&r["bytes"]),
                    day(&r["created_at"]),
                ]
            })
            .await
        }
    }
}

/// Uploads each file to `endpoint` with a byte progress bar (on a terminal).
async fn add(a: AddArgs, endpoint: &str) -> Result<()> {
    if a.name.is_some() && a.files.len() > 1 {
        bail!("--name names one file; {} were given", a.files.len());
    }
    let partitions = endpoint == "/v1/partitions";
    if !partitions && (a.domain.is_some() || a.tags.is_some() || a.no_train || a.wait) {
        bail!("--domain, --tags, --no-train and --wait are for partitions");
    }
    let api = Api::new(&a.server)?;
    api.can_write().await?;
    let bars = MultiProgress::new();
    if !std::io::stderr().is_terminal() {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut answers = Vec::new();
    for file in &a.files {
        let name = match &a.name {
            Some(n) => n.clone(),
            None => stem(file)?,
        };
        let mut query = vec![("name", name.clone())];
        query.extend(a.text_field.clone().map(|f| ("text_field", f)));
        if partitions {
            query.extend(a.domain.clone().map(|d| ("domain", d)));
            query.extend(a.tags.clone().map(|t| ("tags", t)));
            query.push(("train", (!a.no_train).to_string()));
        }
        let opened = tokio::fs::File::open(file)
            .await
            .with_context(|| file.display().to_string())?;
        let size = opened.metadata().await?.len();
        let bar = bars.add(ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message(name.clone());
        let counted = bar.clone();
        let stream = tokio_util::io::ReaderStream::new(opened)
            .inspect_ok(move |chunk| counted.inc(chunk.len() as u64));
        let response = api
            .http()
            .post(format!("{}{endpoint}", api.url))
            .query(&query)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .with_context(|| format!("no answer from {}", api.url))?;
        bar.finish_and_clear();
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{}: {}", file.display(), refusal(status, &answer));
        }
        let row = if partitions {
            &answer["partition"]
        } else {
            &answer
        };
        if a.print_names {
            println!("{}", text(&row["name"]));
        } else if !a.json {
            let verb = if status == reqwest::StatusCode::CREATED {
                "stored"
            } else {
                "already stored"
            };
            let queued = answer["models"].as_array().map_or(0, Vec::len);
            let training = if partitions && queued > 0 {
                format!(", {queued} unit model(s) queued")
            } else {
                String::new()
            };
            println!(
                "{name}: {verb} ({} documents, {}){training}",
                text(&row["documents"]),
                bytes(&row["bytes"])
            );
        }
        answers.push(answer);
    }
    if a.wait {
        let training: Vec<Value> = answers
            .iter()
            .flat_map(|a| a["models"].as_array().cloned().unwrap_or_default())
            .filter(|m| m["state"] != "ready")
            .filter_map(|m| {
                m["job_id"]
                    .as_str()
                    .map(|job| serde_json::json!({ "job": job }))
            })
            .collect();
        api.wait_for_training(&training).await?;
        if !a.json && !a.print_names {
            println!("{} unit model(s) trained", training.len());
        }
    }
    if a.json {
        print_json(&answers)?;
    }
    Ok(())
}

/// `dir/code.jsonl.gz` → `code`.
fn stem(file: &Path) -> Result<String> {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .context("name the upload with --name")?;
    Ok(name.split('.').next().unwrap_or(&name).to_string())
}

async fn list_partitions(a: ListArgs) -> Result<()> {
    // Unit-model states by partition, for the table, from the models' list (paged, not one
    // call each).
    let mut states: HashMap<String, Vec<String>> = HashMap::new();
    if !a.json {
        for m in all(&Api::new(&a.server)?, "/v1/models", usize::MAX).await? {
            if let (Some(p), Some(s)) = (m["partition_id"].as_str(), m["state"].as_str()) {
                states.entry(p.to_string()).or_default().push(s.to_string());
            }
        }
    }
    let header = [
        "name",
        "domain",
        "documents",
        "bytes",
        "unit models",
        "created",
    ];
    print_list(&a, "/v1/partitions", &header, |r| {
        let id = r["id"].as_str().unwrap_or_default();
        vec![
            text(&r["name"]),
            text(&r["domain"]),
            text(&r["documents"]),
            bytes(&r["bytes"]),
            states.get(id).map_or("none".to_string(), |s| summary(s)),
            day(&r["created_at"]),
        ]
    })
    .await
}

/// `["ready", "ready", "queued"]` → `2 ready, 1 queued`.
fn summary(states: &[String]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for s in states {
        match counts.iter_mut().find(|(k, _)| k == s) {
            Some((_, n)) => *n += 1,
            None => counts.push((s.clone(), 1)),
        }
    }
    counts
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn bases(a: ListArgs) -> Result<()> {
    let header = ["name", "state", "architecture", "width × layers", "created"];
    print_list(&a, "/v1/bases", &header, |r| {
        let c = &r["config"];
        let width = c.get("hidden_size").or_else(|| c.get("n_embd"));
        let layers = c.get("num_hidden_layers").or_else(|| c.get("n_layer"));
        let shape = match (width, layers) {
            (Some(w), Some(l)) => format!("{w} × {l}"),
            _ => "–".into(),
        };
        vec![
            text(&r["name"]),
            text(&r["state"]),
            text(&c["model_type"]),
            shape,
            day(&r["created_at"]),
        ]
    })
    .await
}

pub async fn recipes(a: ListArgs) -> Result<()> {
    let header = ["name", "tokens", "lr", "batch tokens", "seq len", "created"];
    print_list(&a, "/v1/recipes", &header, |r| {
        let c = &r["config"];
        vec![
            text(&r["name"]),
            text(&c["tokens"]),
            text(&c["lr"]),
            text(&c["batch_tokens"]),
            text(&c["seq_len"]),
            day(&r["created_at"]),
        ]
    })
    .await
}

/// Up to `a.limit` items of the list at `path`: JSON with `--json`, otherwise a table of
/// `header` with `row` of each item.
pub async fn print_list(
    a: &ListArgs,
    path: &str,
    header: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) -> Result<()> {
    let rows = all(&Api::new(&a.server)?, path, a.limit).await?;
    if a.json {
        return print_json(&rows);
    }
    let mut t = table(header);
    for r in &rows {
        t.add_row(row(r));
    }
    println!("{t}");
    Ok(())
}

/// Up to `limit` items of a paged list, following `next`.
pub async fn all(api: &Api, path: &str, limit: usize) -> Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    while items.len() < limit {
        let page = (limit - items.len()).min(500);
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut url = format!("{path}{sep}limit={page}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let answer = api.get(&url).await?;
        items.extend(answer["items"].as_array().into_iter().flatten().cloned());
        match answer["next"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    Ok(items)
}

pub fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A JSON value as a cell: strings bare, null as a dash.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

fn bytes(v: &Value) -> String {
    v.as_u64()
        .map_or("–".into(), |b| indicatif::HumanBytes(b).to_string())
}

/// The date and minute of an RFC 3339 time.
pub fn day(v: &Value) -> String {
    v.as_str()
        .map_or("–".into(), |s| s.get(..16).unwrap_or(s).replace('T', " "))
}
