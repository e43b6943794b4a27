//! The engine demo: pre-train a `tiny` base on a mix of the corpus's domains, train one unit
//! model per domain from it, and print the perplexity of every merged pair of units on a
//! held-out multi-domain evaluation set. Models already in the work folder are reused.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::engine::checkpoint::{LoadedModel, WEIGHTS_FILE};
use crate::engine::data::{self, Document};
use crate::engine::eval::EvalConfig;
use crate::engine::model::ModelConfig;
use crate::engine::train::TrainConfig;
use crate::local::{self, Engine};

#[derive(Args)]
pub struct DemoArgs {
    /// A folder of `<domain>.jsonl` files.
    #[arg(long, default_value = "../shared/corpus", env = "MIXPOOL_CORPUS")]
    pub corpus: PathBuf,
    /// Where the base, unit and merged models are written (and reused from).
    #[arg(long, default_value = "demo")]
    pub work: PathBuf,
    /// Tokens to pre-train the base on.
    #[arg(long, default_value_t = 256 * 4096)]
    pub base_tokens: u64,
    /// Tokens every unit model trains for.
    #[arg(long, default_value_t = 50 * 4096)]
    pub unit_tokens: u64,
    /// Retrain everything instead of reusing models in the work folder.
    #[arg(long)]
    pub fresh: bool,
    #[command(flatten)]
    pub engine: Engine,
}

/// Held-out bytes per domain for evaluation; each evaluated document is cut to `EVAL_DOC`.
const EVAL_BYTES: usize = 12_000;
const EVAL_DOC: usize = 3_000;
/// Bytes per domain in the base's pre-training mix.
const SEED_BYTES: usize = 300_000;

pub fn run(args: DemoArgs) -> Result<()> {
    let device = args.engine.device()?;
    let domains = read_corpus(&args.corpus)?;
    if args.fresh {
        let _ = std::fs::remove_dir_all(&args.work);
    }
    let mut eval_docs = Vec::new();
    let mut splits = Vec::new();
    for (name, docs) in domains {
        let (held_out, train) = split(&name, docs);
        eval_docs.extend(held_out);
        splits.push((name, train));
    }

    let base_dir = args.work.join("base");
    if !base_dir.join(WEIGHTS_FILE).exists() {
        let seed_mix: Vec<Document> = splits
            .iter()
            .flat_map(|(_, d)| take_bytes(d, SEED_BYTES))
            .collect();
        let recipe = TrainConfig {
            tokens: args.base_tokens,
            ..TrainConfig::pretrain()
        };
        tracing::info!(
            tokens = recipe.tokens,
            "pre-training the tiny base on {} domains",
            splits.len()
        );
        let base = LoadedModel::init(ModelConfig::preset("tiny").unwrap(), recipe.seed, device)?;
        local::train_model(&base, &seed_mix, &recipe, &args.work.join("base_state"))?;
        base.save(&base_dir)?;
    }
    let recipe = TrainConfig {
        tokens: args.unit_tokens,
        ..TrainConfig::default()
    };
    let mut units = Vec::new();
    for (name, docs) in &splits {
        let dir = args.work.join("units").join(name);
        if !dir.join(WEIGHTS_FILE).exists() {
            tracing::info!(domain = name, tokens = recipe.tokens, "training unit model");
            let model = LoadedModel::load(&base_dir, device)?;
            local::train_model(
                &model,
                docs,
                &recipe,
                &args.work.join("unit_state").join(name),
            )?;
            model.save(&dir)?;
        }
        units.push((name.clone(), dir));
    }

    let config = EvalConfig::default();
    let score = |dir: &Path| -> Result<f64> {
        let model = LoadedModel::load(dir, device)?;
        Ok(local::evaluate(&model, &eval_docs, &config)?
            .total
            .perplexity)
    };
    let base_ppl = score(&base_dir)?;
    let n = units.len();
    let mut table = vec![vec![0.0; n]; n];
    let merged_dir = args.work.join("merged");
    for i in 0..n {
        table[i][i] = score(&units[i].1)?;
        for j in i + 1..n {
            let pair = [units[i].1.clone(), units[j].1.clone()];
            crate::engine::merge::merge_model_dirs(&pair, &[0.5, 0.5], device, &merged_dir)?;
            table[i][j] = score(&merged_dir)?;
            table[j][i] = table[i][j];
        }
    }
    print_table(
        &units.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        &table,
        base_ppl,
        eval_docs.len(),
    );
    Ok(())
}

fn read_corpus(dir: &Path) -> Result<Vec<(String, Vec<Document>)>> {
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

/// The first documents (cut to `EVAL_DOC` bytes) until `EVAL_BYTES` are held out for
/// evaluation, labelled with the domain; the rest is training data.
fn split(domain: &str, docs: Vec<Document>) -> (Vec<Document>, Vec<Document>) {
    let mut held_out = Vec::new();
    let mut bytes = 0;
    let mut rest = docs.into_iter();
    for doc in rest.by_ref() {
        let text = truncate(&doc.text, EVAL_DOC).to_string();
        bytes += text.len();
        held_out.push(Document {
            text,
            domain: Some(domain.to_string()),
        });
        if bytes >= EVAL_BYTES {
            break;
        }
    }
    (held_out, rest.collect())
}

fn take_bytes(docs: &[Document], limit: usize) -> Vec<Document> {
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

fn print_table(names: &[&str], table: &[Vec<f64>], base: f64, docs: usize) {
    println!(
        "\nPerplexity (bytes) on {docs} held-out documents from {} domains.",
        names.len()
    );
    println!(
        "Base model: {base:.3}. Diagonal: one unit model; elsewhere: the 50/50 merge of two.\n"
    );
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
