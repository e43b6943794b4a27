//! Multiple-choice scoring beside text evaluation on the same model, in the same run: tokens
//! read per second by each (the choices of a question batched as sequences of BOS, context
//! and choice; text as full windows), alternating which goes first, best of the rounds.
//!
//! `cargo bench --bench choices [-- --threads 2 --presets tiny,small --rounds 3 --device cpu]`

use std::path::PathBuf;
use std::time::Instant;

use mixpool::cloze::{ClozeConfig, build};
use mixpool::engine::checkpoint::LoadedModel;
use mixpool::engine::choices::PreparedChoices;
use mixpool::engine::data;
use mixpool::engine::eval::{EvalConfig, Prepared};
use mixpool::engine::model::ModelConfig;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let threads: i32 = arg("--threads", "2").parse().expect("--threads N");
    let rounds: usize = arg("--rounds", "3").parse().expect("--rounds N");
    let presets = arg("--presets", "tiny,small");
    let device_name = arg("--device", "cpu");
    let device = mixpool::engine::device::parse(&device_name).expect("--device cpu|cuda[:N]");
    tch::set_num_threads(threads);
    let corpus = PathBuf::from(
        std::env::var("MIXPOOL_CORPUS").unwrap_or_else(|_| "../shared/corpus".into()),
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .expect("a corpus folder (MIXPOOL_CORPUS)")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    let domains: Vec<(String, Vec<String>)> = files
        .iter()
        .map(|path| {
            let docs = data::read_documents(path).unwrap();
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            (name, docs.into_iter().take(400).map(|d| d.text).collect())
        })
        .collect();
    let questions = build(
        &domains,
        &ClozeConfig {
            questions: 25,
            ..Default::default()
        },
    );
    // Text: documents of the same domains, about as many tokens as the questions read.
    let text: Vec<data::Document> = domains
        .iter()
        .flat_map(|(name, docs)| {
            docs.iter().skip(200).take(10).map(|t| data::Document {
                text: t.chars().take(4000).collect(),
                domain: Some(name.clone()),
            })
        })
        .collect();
    println!(
        "choice scoring vs text evaluation, same model and batch, {device_name}, {threads} thread(s), best of {rounds} alternating rounds"
    );
    println!(
        "{:<6} {:>9} {:>12} {:>12} {:>12} {:>12} {:>7}",
        "preset", "questions", "choice tok", "choice tok/s", "text tok", "text tok/s", "ratio"
    );
    for preset in presets.split(',') {
        let config = ModelConfig::preset(preset).expect("a preset name");
        let model = LoadedModel::init(config, 0, device).unwrap();
        let eval = EvalConfig::default();
        let choices = PreparedChoices::new(&model, &questions, &eval).unwrap();
        let windows = Prepared::new(&model, &text, &eval).unwrap();
        let (mut ours, mut theirs) = (0f64, 0f64);
        for round in 0..rounds {
            let time_choices = || {
                let started = Instant::now();
                std::hint::black_box(choices.evaluate(&model));
                choices.tokens() as f64 / started.elapsed().as_secs_f64()
            };
            let time_text = || {
                let started = Instant::now();
                std::hint::black_box(windows.evaluate(&model, eval.batch_size));
                windows.tokens() as f64 / started.elapsed().as_secs_f64()
            };
            if round % 2 == 0 {
                ours = ours.max(time_choices());
                theirs = theirs.max(time_text());
            } else {
                theirs = theirs.max(time_text());
                ours = ours.max(time_choices());
            }
        }
        println!(
            "{:<6} {:>9} {:>12} {:>12.0} {:>12} {:>12.0} {:>7.2}",
            preset,
            questions.len(),
            choices.tokens(),
            ours,
            windows.tokens(),
            theirs,
            ours / theirs
        );
    }
}
