use std::sync::atomic::{AtomicBool, Ordering};

use mixpool::engine::checkpoint::LoadedModel;
use mixpool::engine::data;
use mixpool::engine::eval::{EvalConfig, evaluate};
use mixpool::engine::tokenizer::Tokenizer;
use mixpool::engine::train::{
    Outcome, Progress, Schedule, TrainConfig, TrainError, TrainOptions, train,
};
use tch::{Device, Tensor};

use crate::helpers::{assert_same_weights, corpus_docs, init, small_gpt2, small_llama};

fn quick(tokens: u64) -> TrainConfig {
    TrainConfig {
        tokens,
        lr: 3e-3,
        min_lr: 3e-4,
        warmup_steps: 2,
        schedule: Schedule::Cosine,
        batch_tokens: 4 * 32,
        micro_batch: 2,
        seq_len: 32,
        checkpoint_every: 4,
        ..TrainConfig::default()
    }
}

fn python_tokens() -> Vec<u32> {
    let docs: Vec<_> = corpus_docs("code_python")
        .into_iter()
        .skip(20)
        .take(100)
        .collect();
    data::tokenize(&docs, &Tokenizer::Bytes).unwrap()
}

fn finish(outcome: Outcome) -> mixpool::engine::train::Summary {
    match outcome {
        Outcome::Finished(s) => s,
        other => panic!("{other:?}"),
    }
}

#[test]
fn loss_falls_on_a_real_domain() {
    let model = init(small_llama(), 0);
    let held_out: Vec<_> = corpus_docs("code_python").into_iter().take(10).collect();
    let before = evaluate(&model, &held_out, &EvalConfig::default())
        .unwrap()
        .total
        .perplexity;
    let mut losses = Vec::new();
    let mut record = |p: &Progress| losses.push(p.loss);
    let options = TrainOptions {
        progress: Some(&mut record),
        ..Default::default()
    };
    let summary = finish(train(&model, &python_tokens(), &quick(60 * 128), options).unwrap());
    let after = evaluate(&model, &held_out, &EvalConfig::default())
        .unwrap()
        .total
        .perplexity;
    assert_eq!(losses.len(), 60);
    let head: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let tail: f64 = losses[55..].iter().sum::<f64>() / 5.0;
    assert!(tail < 0.8 * head, "loss {head} -> {tail}");
    assert!(
        after < 0.6 * before,
        "held-out perplexity {before} -> {after}"
    );
    assert_eq!(summary.tokens, 60 * 128);
}

#[test]
fn training_spends_exactly_the_token_budget_cycling_over_small_data() {
    let model = init(small_gpt2(), 0);
    let tokens: Vec<u32> = data::tokenize(
        &[crate::helpers::doc(&"tiny partition ".repeat(10), None)],
        &Tokenizer::Bytes,
    )
    .unwrap();
    assert!(tokens.len() < 200);
    let config = TrainConfig {
        tokens: 10 * 32,
        ..quick(0)
    };
    let mut seen = Vec::new();
    let mut record = |p: &Progress| seen.push(p.tokens);
    let options = TrainOptions {
        progress: Some(&mut record),
        ..Default::default()
    };
    let summary = finish(train(&model, &tokens, &config, options).unwrap());
    assert_eq!(
        config.steps(),
        3,
        "10 sequences at 4 per step: the last step has 2"
    );
    assert_eq!(seen, vec![128, 256, 320]);
    assert_eq!((summary.steps, summary.tokens), (3, 320));
}

#[test]
fn interrupted_and_resumed_training_equals_uninterrupted_training() {
    let tokens = python_tokens();
    let config = quick(12 * 128);
    let base = tempfile::tempdir().unwrap();
    init(small_llama(), 7).save(base.path()).unwrap();
    let load = || LoadedModel::load(base.path(), Device::Cpu).unwrap();

    let whole = load();
    let moments = tempfile::tempdir().unwrap();
    let fisher = |name: &str| moments.path().join(name);
    let options = TrainOptions {
        moments: Some(&fisher("whole.safetensors")),
        ..Default::default()
    };
    finish(train(&whole, &tokens, &config, options).unwrap());

    // Cancelled after step 5: the state is saved there and the next run resumes from it.
    let state = tempfile::tempdir().unwrap();
    let cancel = AtomicBool::new(false);
    let mut stop_at_5 = |p: &Progress| cancel.store(p.step == 5, Ordering::Relaxed);
    let first = load();
    let options = TrainOptions {
        state_dir: Some(state.path()),
        cancel: Some(&cancel),
        progress: Some(&mut stop_at_5),
        moments: Some(&fisher("cancelled.safetensors")),
    };
    assert!(matches!(
        train(&first, &tokens, &config, options).unwrap(),
        Outcome::Cancelled { step: 5 }
    ));
    assert!(
        !fisher("cancelled.safetensors").exists(),
        "moments once finished only"
    );
    let resumed = load();
    let options = TrainOptions {
        state_dir: Some(state.path()),
        moments: Some(&fisher("resumed.safetensors")),
        ..Default::default()
    };
    let summary = finish(train(&resumed, &tokens, &config, options).unwrap());
    assert_eq!(summary.resumed_at, 5);
    assert_same_weights(&whole, &resumed);
    // The second moments (the Fisher estimate) kept at the end: one positive fp32 tensor per
    // parameter, the same after a resume.
    let read = |name: &str| -> std::collections::BTreeMap<String, Tensor> {
        Tensor::read_safetensors(fisher(name))
            .unwrap()
            .into_iter()
            .collect()
    };
    let (a, b) = (read("whole.safetensors"), read("resumed.safetensors"));
    assert_eq!(a.len(), whole.vs.variables().len());
    assert!(a.keys().eq(b.keys()));
    for ((na, ta), tb) in a.iter().zip(b.values()) {
        assert_eq!(ta.kind(), tch::Kind::Float);
        assert!(ta.equal(tb), "{na}");
        assert!(
            ta.min().double_value(&[]) >= 0.0 && ta.max().double_value(&[]) > 0.0,
            "{na}"
        );
        let var = &whole.vs.variables()[na];
        assert_eq!(ta.size(), var.size(), "{na}");
    }

    // Killed after step 6: only the periodic state of step 4 is on disk; steps 5 and 6 are
    // replayed from it.
    let state = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let mut snapshot_at_6 = |p: &Progress| {
        if p.step == 6 {
            for entry in std::fs::read_dir(state.path()).unwrap().flatten() {
                std::fs::copy(entry.path(), crashed.path().join(entry.file_name())).unwrap();
            }
        }
    };
    let options = TrainOptions {
        state_dir: Some(state.path()),
        progress: Some(&mut snapshot_at_6),
        ..Default::default()
    };
    finish(train(&load(), &tokens, &config, options).unwrap());
    let resumed = load();
    let options = TrainOptions {
        state_dir: Some(crashed.path()),
        ..Default::default()
    };
    assert_eq!(
        finish(train(&resumed, &tokens, &config, options).unwrap()).resumed_at,
        4
    );
    assert_same_weights(&whole, &resumed);
}

#[test]
fn a_saved_state_from_other_settings_is_refused() {
    let tokens = python_tokens();
    let state = tempfile::tempdir().unwrap();
    let cancel = AtomicBool::new(true);
    let options = TrainOptions {
        state_dir: Some(state.path()),
        cancel: Some(&cancel),
        ..Default::default()
    };
    let model = init(small_llama(), 1);
    assert!(matches!(
        train(&model, &tokens, &quick(8 * 128), options).unwrap(),
        Outcome::Cancelled { step: 0 }
    ));
    let options = TrainOptions {
        state_dir: Some(state.path()),
        ..Default::default()
    };
    let err = train(
        &model,
        &tokens,
        &TrainConfig {
            lr: 1e-4,
            ..quick(8 * 128)
        },
        options,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("different training config"),
        "{err}"
    );
}

#[test]
fn a_non_finite_loss_stops_training_with_a_clear_error() {
    let model = init(small_llama(), 1);
    tch::no_grad(|| {
        let _ = model.vs.variables()["model.norm.weight"]
            .shallow_clone()
            .fill_(f64::NAN);
    });
    let err = train(
        &model,
        &python_tokens(),
        &quick(8 * 128),
        TrainOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, TrainError::NonFinite { step: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("learning rate"));
}

#[test]
fn invalid_settings_and_too_little_data_are_refused() {
    let model = init(small_llama(), 1);
    let tokens = python_tokens();
    let bad = [
        TrainConfig {
            tokens: 100,
            ..quick(0)
        },
        TrainConfig {
            seq_len: 128,
            batch_tokens: 128,
            tokens: 128,
            ..quick(0)
        },
        TrainConfig {
            lr: f64::NAN,
            ..quick(128)
        },
        TrainConfig {
            micro_batch: 0,
            ..quick(128)
        },
        TrainConfig {
            beta2: 1.0,
            ..quick(128)
        },
    ];
    for config in bad {
        let err = train(&model, &tokens, &config, TrainOptions::default()).unwrap_err();
        assert!(matches!(err, TrainError::Config(_)), "{config:?}: {err}");
    }
    let err = train(&model, &tokens[..20], &quick(128), TrainOptions::default()).unwrap_err();
    assert!(matches!(err, TrainError::Data(_)), "{err}");
}

#[test]
fn learning_rate_warms_up_then_follows_its_schedule() {
    let cosine = TrainConfig {
        tokens: 10 * 128,
        ..quick(0)
    };
    assert_eq!(cosine.steps(), 10);
    assert!((cosine.lr_at(0) - 1.5e-3).abs() < 1e-12);
    assert!((cosine.lr_at(1) - 3e-3).abs() < 1e-12);
    assert!((cosine.lr_at(2) - 3e-3).abs() < 1e-12);
    let lrs: Vec<f64> = (2..10).map(|s| cosine.lr_at(s)).collect();
    assert!(lrs.windows(2).all(|w| w[1] < w[0]));
    assert!(cosine.lr_at(10) >= cosine.min_lr - 1e-15);
    let constant = TrainConfig {
        schedule: Schedule::Constant,
        warmup_steps: 0,
        ..cosine
    };
    assert!((0..10).all(|s| constant.lr_at(s) == 3e-3));
}
