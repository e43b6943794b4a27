//! `mixpool local …`: the engine on files, no server needed. JSONL in, Hugging Face-style
//! model directories out, JSON results on stdout, progress on stderr.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use tch::Device;

use super::serve::Engine;
use crate::config::Config;
use crate::engine::checkpoint::{LoadedModel, read_config};
use crate::engine::choices::{self, PreparedChoices};
use crate::engine::data::{self, Document};
use crate::engine::device;
use crate::engine::eval::{self, EvalConfig, EvalResult};
use crate::engine::model::{ModelConfig, PRESETS};
use crate::engine::train::{
    self, Outcome, Precision, Progress, Schedule, Summary, TrainConfig, TrainOptions,
};
use crate::engine::{hf, merge};

#[derive(Subcommand)]
pub enum LocalCommand {
    /// Create a base model from a preset and pre-train it on data files.
    Pretrain(PretrainArgs),
    /// Continue training a model on one partition for a fixed token budget (a unit model).
    Train(TrainArgs),
    /// Perplexity and bits per byte of a model on an evaluation set, as JSON; or with
    /// `--choices`, its figures on multiple-choice questions.
    Eval(EvalArgs),
    /// Cloze tasks from a corpus folder of `<domain>.jsonl` files, as a JSONL choices file:
    /// per domain, a passage's opening with its true continuation among those of other
    /// documents of the domain.
    Cloze(ClozeArgs),
    /// Parameter-average model directories into one.
    Merge(MergeArgs),
    /// Import a Hugging Face checkpoint directory (Llama, Mistral, Qwen2, GPT-2) as a model
    /// directory to train from.
    Import(ImportArgs),
    /// Write a model directory as a Hugging Face checkpoint (the base's dtype and tokenizer).
    Export(ExportArgs),
}

/// Training hyper-parameters; unset ones keep the command's defaults (`--recipe` first).
#[derive(Args, Clone, Default)]
pub struct RecipeArgs {
    /// A JSON file of training settings to start from.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Token budget (a multiple of --seq-len); data smaller than this repeats.
    #[arg(long)]
    pub tokens: Option<u64>,
    /// Peak learning rate (AdamW).
    #[arg(long)]
    pub lr: Option<f64>,
    /// The rate a cosine schedule decays to.
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Optimizer steps of linear warmup from 0 to --lr.
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// The learning-rate schedule after warmup.
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleArg>,
    /// Tokens per optimizer step (micro-batches accumulate up to it).
    #[arg(long)]
    pub batch_tokens: Option<u64>,
    /// Sequences per forward pass.
    #[arg(long)]
    pub micro_batch: Option<u64>,
    /// Tokens per training sequence (at most the model's context).
    #[arg(long)]
    pub seq_len: Option<u64>,
    /// Seed for the data order (and the initialisation when pre-training).
    #[arg(long)]
    pub seed: Option<u64>,
    /// AdamW weight decay, on matrices only.
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Clip the gradients' global norm to this (0: no clipping).
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// bf16 autocast (CUDA only; fp32 weights) or fp32 throughout.
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
    /// Save the resumable train state every this many steps.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
}

#[derive(ValueEnum, Clone, Copy)]
pub enum ScheduleArg {
    Constant,
    Cosine,
}

#[derive(ValueEnum, Clone, Copy)]
pub enum PrecisionArg {
    Bf16,
    Fp32,
}

impl RecipeArgs {
    pub fn resolve(&self, defaults: TrainConfig) -> Result<TrainConfig> {
        let mut c = match &self.recipe {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: invalid training settings", path.display()))?
            }
            None => defaults,
        };
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = self.$field { c.$field = v; })* };
        }
        set!(
            tokens,
            lr,
            min_lr,
            warmup_steps,
            batch_tokens,
            micro_batch,
            seq_len,
            seed,
            weight_decay,
            grad_clip,
            checkpoint_every
        );
        if let Some(s) = self.schedule {
            c.schedule = match s {
                ScheduleArg::Constant => Schedule::Constant,
                ScheduleArg::Cosine => Schedule::Cosine,
            };
        }
        if let Some(p) = self.precision {
            c.precision = match p {
                PrecisionArg::Bf16 => Precision::Bf16,
                PrecisionArg::Fp32 => Precision::Fp32,
            };
        }
        c.validate()
            .map_err(|e| anyhow::anyhow!("invalid training settings: {e}"))?;
        Ok(c)
    }
}

#[derive(Args)]
pub struct PretrainArgs {
    /// A preset name, or a config.json file.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Training data (JSONL or text, optionally .gz/.zst); repeat for a mix.
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// The model directory to write.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    #[command(flatten)]
    pub engine: Engine,
}

#[derive(Args)]
pub struct TrainArgs {
    /// The model directory to start from.
    #[arg(long)]
    pub base: PathBuf,
    /// The partition's data (JSONL or text, optionally .gz/.zst); repeat for more files.
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// The unit model's directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Where the resumable train state lives (default: OUT/train_state); an interrupted run
    /// started again with the same settings continues from it.
    #[arg(long)]
    pub state: Option<PathBuf>,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    #[command(flatten)]
    pub engine: Engine,
}

#[derive(Args)]
pub struct EvalArgs {
    /// The model directory to evaluate.
    #[arg(long)]
    pub model: PathBuf,
    /// Evaluation data (JSONL with an optional `domain` per line, or text); repeat for more.
    #[arg(long, required_unless_present = "choices")]
    pub data: Vec<PathBuf>,
    /// Multiple-choice questions instead (JSONL in any accepted shape): their figures.
    #[arg(long, conflicts_with = "data")]
    pub choices: Option<PathBuf>,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Window length (default: the model's context length).
    #[arg(long)]
    pub context: Option<usize>,
    #[command(flatten)]
    pub engine: Engine,
}

#[derive(Args)]
pub struct ClozeArgs {
    /// A folder of `<domain>.jsonl` files.
    #[arg(long)]
    pub corpus: PathBuf,
    /// Questions per domain.
    #[arg(long, default_value_t = 50)]
    pub questions: usize,
    /// Documents of each domain left out first (those a pool trains on).
    #[arg(long, default_value_t = 0)]
    pub skip: usize,
    /// Choices per question.
    #[arg(long, default_value_t = 4)]
    pub choices: usize,
    /// The draw of documents and of each gold choice's place: the same seed, the same file.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The JSONL file to write.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct MergeArgs {
    /// Model directories to average.
    #[arg(required = true)]
    pub models: Vec<PathBuf>,
    /// The merged model's directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Comma-separated weights, one per model (normalised); default: uniform.
    #[arg(long, value_delimiter = ',')]
    pub weights: Option<Vec<f64>>,
    #[command(flatten)]
    pub engine: Engine,
}

#[derive(Args)]
pub struct ImportArgs {
    /// The Hugging Face directory: config.json, model.safetensors (or sharded), tokenizer.json.
    pub dir: PathBuf,
    /// The model directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Refuse every config field the engine does not read (beyond a few known harmless
    /// ones), instead of accepting those at their default behaviour.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Args)]
pub struct ExportArgs {
    /// The model directory (a base, unit or merged model).
    pub model: PathBuf,
    /// The Hugging Face directory to write.
    #[arg(long)]
    pub out: PathBuf,
}

impl Engine {
    /// Applies the thread count and resolves the device: these flags over the settings.
    fn device(&self, config: &Config) -> Result<Device> {
        let mut config = config.clone();
        self.apply(&mut config);
        if config.engine.threads > 0 {
            tch::set_num_threads(config.engine.threads);
        }
        device::parse(&config.engine.device).map_err(anyhow::Error::msg)
    }
}

pub fn run(command: LocalCommand, settings: &Config) -> Result<()> {
    match command {
        LocalCommand::Pretrain(a) => {
            let device = a.engine.device(settings)?;
            let config = match ModelConfig::preset(&a.preset) {
                Some(c) => c,
                None if Path::new(&a.preset).is_file() => {
                    let dir = Path::new(&a.preset).parent().unwrap_or(Path::new("."));
                    read_config(dir)?
                }
                None => bail!(
                    "unknown preset {:?}: use one of {} or a config.json path",
                    a.preset,
                    PRESETS.join(", ")
                ),
            };
            let recipe = a.recipe.resolve(TrainConfig::pretrain())?;
            let model = LoadedModel::init(config, recipe.seed, device)?;
            let docs = read_all(&a.data)?;
            let summary = train_model(&model, &docs, &recipe, &a.out.join("train_state"))?;
            model.save(&a.out)?;
            print_json(&summary)
        }
        LocalCommand::Train(a) => {
            let device = a.engine.device(settings)?;
            let recipe = a.recipe.resolve(TrainConfig::default())?;
            let model = LoadedModel::load(&a.base, device)?;
            let docs = read_all(&a.data)?;
            let state = a.state.unwrap_or_else(|| a.out.join("train_state"));
            let summary = train_model(&model, &docs, &recipe, &state)?;
            model.save(&a.out)?;
            print_json(&summary)
        }
        LocalCommand::Eval(a) => {
            let device = a.engine.device(settings)?;
            let model = LoadedModel::load(&a.model, device)?;
            let config = EvalConfig {
                batch_size: a.batch_size,
                context: a.context,
            };
            if let Some(path) = &a.choices {
                let text = std::fs::read(path).with_context(|| path.display().to_string())?;
                let text = data::decompress(text)?;
                let (questions, _) =
                    choices::parse(&text).with_context(|| path.display().to_string())?;
                let prepared = PreparedChoices::new(&model, &questions, &config)?;
                return print_json(&prepared.evaluate(&model));
            }
            let docs = read_all(&a.data)?;
            print_json(&evaluate(&model, &docs, &config)?)
        }
        LocalCommand::Cloze(a) => {
            let mut domains = Vec::new();
            let mut files: Vec<PathBuf> = std::fs::read_dir(&a.corpus)
                .with_context(|| a.corpus.display().to_string())?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
                .collect();
            files.sort();
            for path in files {
                let name = path
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string();
                let docs =
                    data::read_documents(&path).with_context(|| path.display().to_string())?;
                let texts = docs.into_iter().skip(a.skip).map(|d| d.text).collect();
                domains.push((name, texts));
            }
            let config = crate::cloze::ClozeConfig {
                questions: a.questions,
                choices: a.choices,
                seed: a.seed,
                ..Default::default()
            };
            let questions = crate::cloze::build(&domains, &config);
            if questions.is_empty() {
                bail!(
                    "no domain of {} has documents long enough",
                    a.corpus.display()
                );
            }
            let mut out = String::new();
            for q in &questions {
                out.push_str(&serde_json::to_string(q)?);
                out.push('\n');
            }
            std::fs::write(&a.out, out).with_context(|| a.out.display().to_string())?;
            print_json(&serde_json::json!({ "questions": questions.len(), "out": a.out }))
        }
        LocalCommand::Merge(a) => {
            let device = a.engine.device(settings)?;
            let weights = a
                .weights
                .unwrap_or_else(|| merge::uniform_weights(a.models.len()));
            let stats = merge::merge_model_dirs(&a.models, &weights, device, &a.out)?;
            print_json(&stats)
        }
        LocalCommand::Import(a) => {
            let strictness = match a.strict {
                true => hf::Strictness::Strict,
                false => hf::Strictness::ByEffect,
            };
            print_json(&hf::import(&a.dir, &a.out, strictness)?)
        }
        LocalCommand::Export(a) => {
            hf::export(&a.model, &a.out)?;
            print_json(&serde_json::json!({ "exported": a.out }))
        }
    }
}

pub fn read_all(paths: &[PathBuf]) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    for path in paths {
        docs.extend(data::read_documents(path).with_context(|| format!("{}", path.display()))?);
    }
    Ok(docs)
}

/// Tokenises `docs` and trains, logging progress; the train state in `state` makes an
/// interrupted run resumable and is removed once the run finishes.
pub fn train_model(
    model: &LoadedModel,
    docs: &[Document],
    recipe: &TrainConfig,
    state: &Path,
) -> Result<Summary> {
    let tokens = data::tokenize(docs, &model.tokenizer)?;
    // A progress bar on a terminal; otherwise twenty log lines over the run.
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(recipe.steps());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "train [{bar:40}] {pos}/{len} steps, {msg} ({eta} left)",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar
    });
    let log_every = (recipe.steps() / 20).max(1);
    let mut progress = |p: &Progress| match &bar {
        Some(bar) => {
            bar.set_position(p.step);
            bar.set_message(format!(
                "loss {:.4}, {:.0} tokens/s",
                p.loss, p.tokens_per_sec
            ));
        }
        None if p.step.is_multiple_of(log_every) || p.step == p.steps => {
            tracing::info!(
                step = p.step,
                steps = p.steps,
                loss = format!("{:.4}", p.loss),
                tokens_per_sec = p.tokens_per_sec as u64,
                "train"
            );
        }
        None => {}
    };
    let options = TrainOptions {
        state_dir: Some(state),
        cancel: None,
        progress: Some(&mut progress),
        moments: None,
    };
    let outcome = train::train(model, &tokens, recipe, options);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match outcome? {
        Outcome::Finished(summary) => {
            let _ = std::fs::remove_dir_all(state);
            Ok(summary)
        }
        Outcome::Cancelled { step } => bail!("training cancelled at step {step}"),
    }
}

pub fn evaluate(model: &LoadedModel, docs: &[Document], config: &EvalConfig) -> Result<EvalResult> {
    Ok(eval::evaluate(model, docs, config)?)
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
