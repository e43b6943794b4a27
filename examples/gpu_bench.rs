//! Training and evaluation throughput of `base-130m` on one GPU in bf16 autocast, with MFU
//! against the card's dense bf16 peak (`MIXPOOL_PEAK_TFLOPS`, default 989: an H100 SXM).
//! Run by `bench/gpu.sh` on a GPU machine.

use std::time::Instant;

use mixpool::engine::checkpoint::LoadedModel;
use mixpool::engine::data::{self, Document};
use mixpool::engine::device;
use mixpool::engine::eval::{EvalConfig, evaluate};
use mixpool::engine::model::ModelConfig;
use mixpool::engine::tokenizer::Tokenizer;
use mixpool::engine::train::{Precision, Progress, Schedule, TrainConfig, TrainOptions, train};

fn main() {
    let corpus = std::env::var("MIXPOOL_CORPUS").unwrap_or_else(|_| "../shared/corpus".into());
    let peak: f64 = std::env::var("MIXPOOL_PEAK_TFLOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(989.0);
    let device = device::parse("cuda:0").unwrap_or_else(|e| panic!("{e}"));
    let docs = data::read_documents(format!("{corpus}/code_python.jsonl").as_ref()).unwrap();
    let tokens = data::tokenize(&docs, &Tokenizer::Bytes).unwrap();

    let config = ModelConfig::preset("base-130m").unwrap();
    let model = LoadedModel::init(config.clone(), 0, device).unwrap();
    let params = model.parameters();
    let (micro, seq, warmup, steps) = (8u64, 2048u64, 3u64, 12u64);
    let recipe = TrainConfig {
        tokens: (warmup + steps) * micro * seq,
        batch_tokens: micro * seq,
        micro_batch: micro,
        seq_len: seq,
        lr: 6e-4,
        schedule: Schedule::Constant,
        precision: Precision::Bf16,
        ..TrainConfig::default()
    };
    let mut times = Vec::new();
    let mut record = |_: &Progress| times.push(Instant::now());
    train(
        &model,
        &tokens,
        &recipe,
        TrainOptions {
            progress: Some(&mut record),
            ..Default::default()
        },
    )
    .unwrap();
    let seconds = (times[times.len() - 1] - times[warmup as usize - 1]).as_secs_f64();
    let train_tps = (steps * micro * seq) as f64 / seconds;
    let mfu = train_tps * config.train_flops_per_token(params) / (peak * 1e12);

    let eval_docs: Vec<Document> = docs.iter().take(256).cloned().collect();
    let eval_config = EvalConfig {
        batch_size: 16,
        context: None,
    };
    evaluate(&model, &eval_docs[..16], &eval_config).unwrap();
    let start = Instant::now();
    let result = evaluate(&model, &eval_docs, &eval_config).unwrap();
    let eval_tps = result.total.tokens as f64 / start.elapsed().as_secs_f64();

    println!(
        "base-130m ({:.1}M parameters, byte vocabulary), bf16 autocast on {}",
        params as f64 / 1e6,
        device::name(device)
    );
    println!(
        "  train: {train_tps:.0} tokens/s (batch {micro} x {seq}), MFU {:.1}% of {peak} TFLOP/s",
        100.0 * mfu
    );
    println!("  eval:  {eval_tps:.0} tokens/s (fp32 weights, batch 16)");
}
