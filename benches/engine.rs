//! Engine throughput beside a Python PyTorch reference run in the same invocation, with the
//! same architecture, batch and thread count (`bench/reference.py`, in a venv set up once),
//! and merge throughput beside the time to read the same bytes.
//!
//! `make bench [ARGS="--threads 1 --presets tiny,small"]`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use mixpool::engine::checkpoint::LoadedModel;
use mixpool::engine::data::{self, Document};
use mixpool::engine::eval::{EvalConfig, evaluate};
use mixpool::engine::merge::{merge_files, uniform_weights};
use mixpool::engine::model::ModelConfig;
use mixpool::engine::tokenizer::Tokenizer;
use mixpool::engine::train::{Progress, Schedule, TrainConfig, TrainOptions, train};
use tch::Device;

struct Settings {
    threads: i32,
    presets: Vec<String>,
    /// Timed optimizer steps (after two warm-up steps); default per preset.
    steps: Option<u64>,
    rounds: usize,
}

fn settings() -> Settings {
    let mut s = Settings {
        threads: 1,
        presets: vec!["tiny".into(), "small".into()],
        steps: None,
        rounds: 2,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--threads" => s.threads = value.parse().expect("--threads N"),
            "--presets" => s.presets = value.split(',').map(String::from).collect(),
            "--steps" => s.steps = Some(value.parse().expect("--steps N")),
            "--rounds" => s.rounds = value.parse().expect("--rounds N"),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    s
}

/// (micro batch, sequence length, timed steps, evaluation batches) per preset: the preset's
/// full context, and about ten seconds of work for each measurement.
fn shape(preset: &str) -> (u64, u64, u64, usize) {
    match preset {
        "tiny" => (16, 256, 24, 32),
        "small" => (8, 512, 8, 8),
        other => panic!("no benchmark shape for {other}"),
    }
}

fn corpus_file() -> PathBuf {
    let dir = std::env::var("MIXPOOL_CORPUS").unwrap_or_else(|_| "../shared/corpus".into());
    PathBuf::from(dir).join("code_python.jsonl")
}

fn python() -> PathBuf {
    let cache = std::env::var("MIXPOOL_CACHE")
        .unwrap_or_else(|_| format!("{}/.cache/mixpool", std::env::var("HOME").unwrap()));
    let venv = PathBuf::from(cache).join("bench-venv");
    let python = venv.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import torch"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        eprintln!("setting up {} with torch==2.11.0 (once)", venv.display());
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap()
            .success()
            && Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "torch==2.11.0"])
                .status()
                .unwrap()
                .success();
        assert!(ok, "could not set up the reference venv");
    }
    python
}

/// Consecutive pieces of `text` of exactly `len` bytes that start and end on characters.
fn windows(text: &str, len: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    while start + len <= text.len() {
        if text.is_char_boundary(start) && text.is_char_boundary(start + len) {
            out.push(&text[start..start + len]);
            start += len;
        } else {
            start += 1;
        }
    }
    out
}

struct Figures {
    train: f64,
    eval: f64,
}

fn rust_run(
    config: &ModelConfig,
    tokens: &[u32],
    docs: &[Document],
    micro: u64,
    seq: u64,
    steps: u64,
) -> Figures {
    let model = LoadedModel::init(config.clone(), 0, Device::Cpu).unwrap();
    let warmup = 2;
    let recipe = TrainConfig {
        tokens: (warmup + steps) * micro * seq,
        batch_tokens: micro * seq,
        micro_batch: micro,
        seq_len: seq,
        schedule: Schedule::Constant,
        ..TrainConfig::default()
    };
    let mut times = Vec::new();
    let mut record = |_: &Progress| times.push(Instant::now());
    train(
        &model,
        tokens,
        &recipe,
        TrainOptions {
            progress: Some(&mut record),
            ..Default::default()
        },
    )
    .unwrap();
    let seconds = (times[times.len() - 1] - times[warmup as usize - 1]).as_secs_f64();
    let train = (steps * micro * seq) as f64 / seconds;

    let eval_config = EvalConfig {
        batch_size: micro as usize,
        context: None,
    };
    evaluate(&model, &docs[..micro as usize], &eval_config).unwrap();
    let start = Instant::now();
    let result = evaluate(&model, docs, &eval_config).unwrap();
    let eval = result.total.tokens as f64 / start.elapsed().as_secs_f64();
    Figures { train, eval }
}

fn python_run(
    python: &Path,
    config: &ModelConfig,
    threads: i32,
    micro: u64,
    seq: u64,
    steps: u64,
    eval_batches: usize,
) -> Figures {
    let settings = serde_json::json!({
        "config": config, "threads": threads, "micro_batch": micro, "seq_len": seq,
        "warmup_steps": 2, "steps": steps, "eval_batches": eval_batches,
        "data": corpus_file(),
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/reference.py");
    let out = Command::new(python)
        .arg(script)
        .arg(settings.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Figures {
        train: v["train_tokens_per_sec"].as_f64().unwrap(),
        eval: v["eval_tokens_per_sec"].as_f64().unwrap(),
    }
}

fn best(figures: &[Figures]) -> Figures {
    Figures {
        train: figures.iter().map(|f| f.train).fold(0.0, f64::max),
        eval: figures.iter().map(|f| f.eval).fold(0.0, f64::max),
    }
}

fn bench_merge(threads: i32) {
    let dir = tempfile::tempdir().unwrap();
    let config = ModelConfig::preset("small").unwrap();
    let inputs: Vec<PathBuf> = (0..8)
        .map(|seed| {
            let path = dir.path().join(format!("m{seed}"));
            LoadedModel::init(config.clone(), seed, Device::Cpu)
                .unwrap()
                .save(&path)
                .unwrap();
            path.join("model.safetensors")
        })
        .collect();
    let bytes: u64 = inputs.iter().map(|p| p.metadata().unwrap().len()).sum();
    let read = || {
        let start = Instant::now();
        let total: usize = inputs.iter().map(|p| std::fs::read(p).unwrap().len()).sum();
        assert_eq!(total as u64, bytes);
        start.elapsed().as_secs_f64()
    };
    let out = dir.path().join("merged.safetensors");
    let merge = || {
        let start = Instant::now();
        merge_files(&inputs, &uniform_weights(8), Device::Cpu, &out).unwrap();
        start.elapsed().as_secs_f64()
    };
    read();
    let read_s = (0..3).map(|_| read()).fold(f64::MAX, f64::min);
    let merge_s = (0..3).map(|_| merge()).fold(f64::MAX, f64::min);
    let gb = bytes as f64 / 1e9;
    println!(
        "\nmerge of 8 `small` checkpoints ({:.0} MB in all), {threads} thread(s), page cache warm:",
        gb * 1e3
    );
    println!(
        "  read the same bytes   {:>8.3} s  {:>6.2} GB/s",
        read_s,
        gb / read_s
    );
    println!(
        "  merge (fp64 acc.)     {:>8.3} s  {:>6.2} GB/s   merge/read time = {:.2}",
        merge_s,
        gb / merge_s,
        merge_s / read_s
    );
}

fn main() {
    let s = settings();
    tch::set_num_threads(s.threads);
    let python = python();
    let docs = data::read_documents(&corpus_file()).unwrap();
    let tokens = data::tokenize(&docs, &Tokenizer::Bytes).unwrap();
    println!(
        "engine vs PyTorch reference (same model, batch, optimizer), CPU, {} thread(s), best of {} alternating rounds",
        s.threads, s.rounds
    );
    println!(
        "{:<6} {:>6} {:>12} {:>12} {:>7} {:>12} {:>12} {:>7}",
        "preset",
        "params",
        "train tok/s",
        "torch tok/s",
        "ratio",
        "eval tok/s",
        "torch tok/s",
        "ratio"
    );
    for preset in &s.presets {
        let config = ModelConfig::preset(preset).expect("a preset name");
        let (micro, seq, steps, eval_batches) = shape(preset);
        let steps = s.steps.unwrap_or(steps);
        // Real text cut into documents of exactly one window (seq_len bytes, no EOS), as the
        // reference evaluates full windows.
        let eval_docs: Vec<Document> = docs
            .iter()
            .flat_map(|d| windows(&d.text, seq as usize))
            .take(eval_batches * micro as usize)
            .map(|text| Document {
                text: text.to_string(),
                domain: None,
            })
            .collect();
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        // Alternate which side goes first, so drift on a shared machine favours neither.
        for round in 0..s.rounds {
            let reference =
                || python_run(&python, &config, s.threads, micro, seq, steps, eval_batches);
            if round % 2 == 0 {
                ours.push(rust_run(&config, &tokens, &eval_docs, micro, seq, steps));
                theirs.push(reference());
            } else {
                theirs.push(reference());
                ours.push(rust_run(&config, &tokens, &eval_docs, micro, seq, steps));
            }
        }
        let (o, t) = (best(&ours), best(&theirs));
        let params = LoadedModel::init(config.clone(), 0, Device::Cpu)
            .unwrap()
            .parameters();
        println!(
            "{:<6} {:>5.1}M {:>12.0} {:>12.0} {:>7.2} {:>12.0} {:>12.0} {:>7.2}",
            preset,
            params as f64 / 1e6,
            o.train,
            t.train,
            o.train / t.train,
            o.eval,
            t.eval,
            o.eval / t.eval
        );
    }
    bench_merge(s.threads);
}
