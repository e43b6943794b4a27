//! `mixpool partitions register` and `mixpool eval-sets register`: a corpus already in the
//! pool's store (JSONL or text shards, Parquet files) registered in place; waits for the
//! worker that reads it and prints what was registered.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use serde_json::{Value, json};

use super::Server;
use super::api::{Api, Progress};

#[derive(Args)]
pub struct RegisterArgs {
    /// The dataset's name.
    pub name: String,
    /// Keys of the store to read, in this order.
    #[arg(
        long = "object",
        required_unless_present = "prefix",
        conflicts_with = "prefix"
    )]
    pub objects: Vec<String>,
    /// Read every object under this prefix, in key order.
    #[arg(long)]
    pub prefix: Option<String>,
    /// jsonl, text or parquet (default: parquet when every key ends in .parquet).
    #[arg(long)]
    pub format: Option<String>,
    /// Parquet: the column holding the text (default text).
    #[arg(long)]
    pub text_field: Option<String>,
    /// The partition's domain (partitions only).
    #[arg(long)]
    pub domain: Option<String>,
    /// Register the partition without queueing its unit model.
    #[arg(long)]
    pub no_train: bool,
    /// Print the registered dataset as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: Server,
}

/// Registers from the store at `endpoint` and waits for the `register` job.
pub async fn register(a: RegisterArgs, endpoint: &str) -> Result<()> {
    let api = Api::new(&a.server)?;
    let mut body = json!({"name": a.name});
    if a.prefix.is_some() {
        body["prefix"] = json!(a.prefix);
    } else {
        body["objects"] = json!(a.objects);
    }
    for (key, value) in [
        ("format", &a.format),
        ("text_field", &a.text_field),
        ("domain", &a.domain),
    ] {
        if let Some(value) = value {
            body[key] = json!(value);
        }
    }
    if a.no_train {
        body["train"] = json!(false);
    }
    let accepted = api.post(endpoint, &body).await?;
    let Some(id) = accepted["job"]["id"].as_str() else {
        bail!("the server did not answer with a job: {accepted}");
    };
    let mut progress = Progress::new(format!("reading {}", a.name));
    let job = loop {
        let job = api.get(&format!("/v1/jobs/{id}")).await?;
        match job["state"].as_str() {
            Some("succeeded") => break job,
            Some(state @ ("failed" | "cancelled")) => {
                progress.finish();
                bail!("registering {} {state}: {}", a.name, text(&job["error"]));
            }
            _ => progress.set(
                (job["progress"].as_f64().unwrap_or(0.0) * 100.0) as u64,
                100,
            ),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    progress.finish();
    let result = &job["result"];
    let dataset = result
        .get("partition")
        .or_else(|| result.get("eval_set"))
        .unwrap_or(&Value::Null);
    if a.json {
        println!("{}", serde_json::to_string_pretty(result)?);
        return Ok(());
    }
    let objects = dataset["sources"]["objects"].as_array().map_or(0, Vec::len);
    let existing = if result["new"] == json!(false) {
        " (the same documents were already there)"
    } else {
        ""
    };
    println!(
        "{}: {} documents, {} bytes of text, from {objects} object(s){existing}",
        text(&dataset["name"]),
        dataset["documents"],
        dataset["bytes"],
    );
    Ok(())
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}
