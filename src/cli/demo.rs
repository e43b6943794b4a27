//! The demo: the service on a real multi-domain corpus. It starts `mixpool serve` (API and
//! one worker), then, through the API like any client, uploads a seed sample of every
//! domain, creates a `tiny` base pre-trained on it and a unit recipe, uploads one partition
//! per domain and a held-out evaluation set, and — the server still running — prints the
//! perplexity of every single and paired mixture once the unit models are trained. Run it
//! again and everything already in the pool is found, not redone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use super::client::Progress;
use super::serve::ServeArgs;
use crate::config::Config;
use crate::engine::data::{self, Document, jsonl};

#[derive(Args)]
pub struct DemoArgs {
    /// A folder of `<domain>.jsonl` files.
    #[arg(long, default_value = "../shared/corpus", env = "MIXPOOL_CORPUS")]
    pub corpus: PathBuf,
    /// Tokens to pre-train the base on.
    #[arg(long, default_value_t = 256 * 4096)]
    pub base_tokens: u64,
    /// Tokens every unit model trains for.
    #[arg(long, default_value_t = 50 * 4096)]
    pub unit_tokens: u64,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Held-out bytes per domain for evaluation; each evaluated document is cut to `EVAL_DOC`.
const EVAL_BYTES: usize = 12_000;
const EVAL_DOC: usize = 3_000;
/// Bytes per domain in the base's pre-training sample.
const SEED_BYTES: usize = 300_000;
/// Cloze questions per domain, from documents kept out of training.
const CLOZE_QUESTIONS: usize = 20;
const BASE: &str = "demo-tiny";

pub async fn run(args: DemoArgs, config: &Config) -> Result<()> {
    let domains = read_corpus(&args.corpus)?;
    let app = args.serve.start(config).await?;
    app.stop_on_signal();
    let url = app.url();
    let (token, new) = super::token::local_admin(&app.pool, &app.data, "demo-admin").await?;
    let saved = app.data.join("demo-admin.token");
    if new {
        println!(
            "an admin token for this pool (saved in {}):\n{token}",
            saved.display()
        );
    } else {
        println!("the admin token is in {}", saved.display());
    }
    println!(
        "export MIXPOOL_URL={url} MIXPOOL_TOKEN=$(cat {})",
        saved.display()
    );
    let api = Client::new(url, &token)?;
    let seeding = tokio::spawn(async move {
        if let Err(e) = seed(api, domains, args.base_tokens, args.unit_tokens).await {
            tracing::error!("the demo could not seed the pool: {e:#}");
        }
    });
    // The server runs until SIGTERM or Ctrl-C, whether seeding is done or not.
    let served = app.wait().await;
    seeding.abort();
    served
}

/// Fills the pool through the API, then prints the scores of all singles and pairs.
async fn seed(
    api: Client,
    domains: Vec<(String, Vec<Document>)>,
    base_tokens: u64,
    unit_tokens: u64,
) -> Result<()> {
    let mut eval_docs = Vec::new();
    let mut seed_docs = Vec::new();
    let mut partitions = Vec::new();
    let mut cloze_docs = Vec::new();
    let cloze = crate::cloze::ClozeConfig {
        questions: CLOZE_QUESTIONS,
        ..Default::default()
    };
    for (name, docs) in domains {
        let (held_out, mut train) = split(&name, docs, EVAL_BYTES, EVAL_DOC);
        // The cloze questions' documents: the next ones, kept out of training too.
        let kept = (CLOZE_QUESTIONS * cloze.choices * 2).min(train.len() / 4);
        let questions: Vec<String> = train.drain(..kept).map(|d| d.text).collect();
        cloze_docs.push((name.clone(), questions));
        eval_docs.extend(held_out);
        seed_docs.extend(take_bytes(&train, SEED_BYTES));
        partitions.push((name, train));
    }
    let questions = crate::cloze::build(&cloze_docs, &cloze);

    api.send(
        "POST",
        "/v1/partitions?name=seed-sample&train=false",
        jsonl(&seed_docs),
    )
    .await?;
    let base = json!({"name": BASE, "preset": "tiny", "pretrain_on": "seed-sample",
        "pretrain_tokens": base_tokens});
    api.send("POST", "/v1/bases", base.to_string()).await?;
    let recipe = json!({"name": "demo-unit", "tokens": unit_tokens});
    api.send("POST", "/v1/recipes", recipe.to_string()).await?;
    // A bar on a terminal, a line every ten seconds otherwise.
    let mut progress = Progress::new(format!("pre-training {BASE} on {base_tokens} tokens"));
    loop {
        let base = api.get(&format!("/v1/bases/{BASE}")).await?;
        match base["state"].as_str() {
            Some("ready") => break,
            Some("failed") => bail!("pre-training the base failed: {}", base["job"]["error"]),
            _ => {}
        }
        let fraction = base["job"]["progress"].as_f64().unwrap_or(0.0);
        progress.set((fraction * 100.0) as u64, 100);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    progress.finish();
    for (name, docs) in &partitions {
        let path = format!("/v1/partitions?name={name}&domain={name}");
        api.send("POST", &path, jsonl(docs)).await?;
    }
    api.send("POST", "/v1/eval-sets?name=held-out", jsonl(&eval_docs))
        .await?;
    let questions_jsonl: String = questions
        .iter()
        .map(|q| serde_json::to_string(q).expect("questions serialise") + "\n")
        .collect();
    api.send(
        "POST",
        "/v1/eval-sets?name=cloze&kind=choices",
        questions_jsonl,
    )
    .await?;
    let names: Vec<&str> = partitions.iter().map(|(n, _)| n.as_str()).collect();
    tracing::info!(
        "the pool is seeded (unit models train in the background). Try:\n  \
         curl {}/v1/partitions\n  \
         curl '{}/v1/score?partitions={},{}&eval=held-out&wait=60'\n  \
         curl {}/v1/jobs?state=running",
        api.url(),
        api.url(),
        names[0],
        names[1],
        api.url()
    );

    let mut progress = Progress::new("unit models trained");
    let mut ready = 0;
    while ready < names.len() {
        ready = 0;
        for name in &names {
            let p = api.get(&format!("/v1/partitions/{name}")).await?;
            match p["models"][0]["state"].as_str() {
                Some("ready") => ready += 1,
                Some("failed") => bail!("training the unit model of {name} failed"),
                _ => {}
            }
        }
        progress.set(ready as u64, names.len() as u64);
        if ready < names.len() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    progress.finish();
    // Every single and every pair, with their cells in the table.
    let mut cells = Vec::new();
    let mut mixtures = Vec::new();
    for i in 0..names.len() {
        for j in i..names.len() {
            cells.push((i, j));
            mixtures.push(if i == j {
                vec![names[i]]
            } else {
                vec![names[i], names[j]]
            });
        }
    }
    let batch = json!({"mixtures": mixtures, "eval_sets": ["held-out", "cloze"], "wait": 600});
    let answer = loop {
        let answer = api.send("POST", "/v1/scores", batch.to_string()).await?;
        if answer["pending"] == 0 {
            break answer;
        }
        tracing::info!("{} of {} mixtures scored", answer["done"], mixtures.len());
    };
    // Each mixture's answers, in order: on held-out, then on cloze.
    let n = names.len();
    let figure = |k: usize, set: usize, name: &str| {
        answer["results"][2 * k + set]["score"][name]
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    let table_of = |set: usize, name: &str| {
        let mut table = vec![vec![f64::NAN; n]; n];
        for (k, &(i, j)) in cells.iter().enumerate() {
            let v = figure(k, set, name);
            (table[i][j], table[j][i]) = (v, v);
        }
        table
    };
    println!(
        "\nPerplexity (bytes) on {} held-out documents from {n} domains.",
        eval_docs.len()
    );
    print_table(&names, &table_of(0, "perplexity"));
    println!(
        "\nCloze accuracy on {} questions ({CLOZE_QUESTIONS} per domain at most: a passage's \
         opening, its true continuation among {} continuations of other documents of the \
         domain; the choice with the highest log-likelihood per byte; chance {:.3}).",
        questions.len(),
        cloze.choices - 1,
        1.0 / cloze.choices as f64
    );
    print_table(&names, &table_of(1, "accuracy"));
    println!(
        "\nThe server keeps running at {} (Ctrl-C stops it).",
        api.url()
    );
    Ok(())
}

/// A JSON client of the API, for the demo and the experiment: the client verbs' calls
/// (token, 503 and restart retries), with "already there" (409 name_taken) taken as done.
pub(crate) struct Client {
    api: super::client::Api,
}

impl Client {
    /// A client sending `token` with every request.
    pub fn new(url: String, token: &str) -> Result<Client> {
        let server = super::client::Server {
            url,
            token: Some(token.to_string()),
        };
        Ok(Client {
            api: super::client::Api::new(&server)?,
        })
    }

    pub fn url(&self) -> &str {
        &self.api.url
    }

    /// Sends a request; a 4xx other than name_taken is an error.
    pub async fn send(&self, method: &str, path: &str, body: String) -> Result<Value> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let (status, answer) = self.api.request(method, path, Some(body.into())).await?;
        if status.is_success() || answer["error"]["code"] == "name_taken" {
            Ok(answer)
        } else {
            bail!("{path}: {status} {answer}")
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.send("GET", path, String::new()).await
    }
}

pub(crate) fn read_corpus(dir: &Path) -> Result<Vec<(String, Vec<Document>)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| {
            format!(
                "reading corpus folder {} (set --corpus or MIXPOOL_CORPUS)",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    if files.len() < 2 {
        bail!(
            "{} holds {} .jsonl domain files; the demo needs at least two",
            dir.display(),
            files.len()
        );
    }
    files
        .iter()
        .map(|path| {
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            let docs = data::read_documents(path).with_context(|| path.display().to_string())?;
            Ok((name, docs))
        })
        .collect()
}

/// The first documents (cut to `doc_bytes`) until `eval_bytes` are held out for evaluation,
/// labelled with the domain; the rest is training data.
pub(crate) fn split(
    domain: &str,
    docs: Vec<Document>,
    eval_bytes: usize,
    doc_bytes: usize,
) -> (Vec<Document>, Vec<Document>) {
    let mut held_out = Vec::new();
    let mut bytes = 0;
    let mut rest = docs.into_iter();
    for doc in rest.by_ref() {
        let text = truncate(&doc.text, doc_bytes).to_string();
        bytes += text.len();
        held_out.push(Document {
            text,
            domain: Some(domain.to_string()),
        });
        if bytes >= eval_bytes {
            break;
        }
    }
    (held_out, rest.collect())
}

pub(crate) fn take_bytes(docs: &[Document], limit: usize) -> Vec<Document> {
    let mut bytes = 0;
    docs.iter()
        .take_while(|d| {
            bytes += d.text.len();
            bytes - d.text.len() < limit
        })
        .cloned()
        .collect()
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn print_table(names: &[&str], table: &[Vec<f64>]) {
    println!("Diagonal: one unit model; elsewhere: the 50/50 merge of two.\n");
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0).max(8);
    print!("{:width$}", "", width = width + 4);
    for i in 0..names.len() {
        print!("  {:>7}", format!("[{i}]"));
    }
    println!();
    for (i, row) in table.iter().enumerate() {
        print!(
            "{:width$}",
            format!("[{i}] {}", names[i]),
            width = width + 4
        );
        for v in row {
            print!("  {v:>7.3}");
        }
        println!();
    }
}
