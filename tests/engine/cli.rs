//! `mixpool local …` end to end, through the real binary.

use std::path::Path;
use std::process::{Command, Output};

use crate::helpers::corpus;

fn mixpool(dir: &Path, args: &[&str]) -> Output {
    let device: &[&str] = if args.contains(&"--device") {
        &[]
    } else {
        &["--device", "cpu"]
    };
    Command::new(env!("CARGO_BIN_EXE_mixpool"))
        .args(args)
        .args(device)
        .args(["--threads", "1"])
        .current_dir(dir)
        .env_remove("MIXPOOL_CONFIG")
        .output()
        .unwrap()
}

fn json(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn local_commands_pretrain_train_evaluate_and_merge_model_directories() {
    let dir = tempfile::tempdir().unwrap();
    let (c, python) = (corpus("code_c"), corpus("code_python"));
    let licenses = dir.path().join("eval.jsonl");
    let head: Vec<String> = std::fs::read_to_string(corpus("legal_licenses"))
        .unwrap()
        .lines()
        .take(20)
        .map(String::from)
        .collect();
    std::fs::write(&licenses, head.join("\n")).unwrap();
    let small = [
        "--tokens",
        "8192",
        "--batch-tokens",
        "2048",
        "--micro-batch",
        "4",
        "--seq-len",
        "128",
    ];

    let out = mixpool(
        dir.path(),
        &[
            &[
                "local",
                "pretrain",
                "--preset",
                "tiny",
                "--data",
                c.to_str().unwrap(),
                "--out",
                "base",
            ],
            &small[..],
        ]
        .concat(),
    );
    assert_eq!(json(&out)["steps"], 4);
    assert!(
        dir.path().join("base/model.safetensors").exists()
            && dir.path().join("base/config.json").exists()
    );
    assert!(
        !dir.path().join("base/train_state").exists(),
        "the train state is removed once training finishes"
    );

    let out = mixpool(
        dir.path(),
        &[
            &[
                "local",
                "train",
                "--base",
                "base",
                "--data",
                python.to_str().unwrap(),
                "--out",
                "unit",
            ],
            &small[..],
        ]
        .concat(),
    );
    assert_eq!(json(&out)["tokens"], 8192);

    let eval = |model: &str| {
        json(&mixpool(
            dir.path(),
            &[
                "local",
                "eval",
                "--model",
                model,
                "--data",
                licenses.to_str().unwrap(),
            ],
        ))
    };
    let base = eval("base");
    assert!(base["perplexity"].as_f64().unwrap() > 1.0);
    assert!(base["bits_per_byte"].as_f64().unwrap() > 0.0);
    assert!(
        base["per_domain"]["legal_licenses"]["tokens"]
            .as_u64()
            .unwrap()
            > 1000
    );

    let merged = json(&mixpool(
        dir.path(),
        &[
            "local",
            "merge",
            "base",
            "unit",
            "--weights",
            "1,3",
            "--out",
            "merged",
        ],
    ));
    assert_eq!(merged["tensors"], 1 + 4 * 9 + 1);
    // Every merged tensor is the weighted average ¼·base + ¾·unit.
    let read = |model: &str| -> std::collections::BTreeMap<String, tch::Tensor> {
        tch::Tensor::read_safetensors(dir.path().join(model).join("model.safetensors"))
            .unwrap()
            .into_iter()
            .collect()
    };
    let (b, u, m) = (read("base"), read("unit"), read("merged"));
    assert_eq!(m.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, merged) in &m {
        let double = |t: &tch::Tensor| t.to_kind(tch::Kind::Double);
        let expected = double(&b[name]) * 0.25 + double(&u[name]) * 0.75;
        let error = (double(merged) - &expected).abs().max().double_value(&[]);
        let scale = expected.abs().max().double_value(&[]).max(1e-3);
        assert!(
            error <= scale * 1e-6,
            "{name}: off the weighted average by {error}"
        );
    }
    assert!(
        u.iter().any(|(name, t)| !t.equal(&b[name])),
        "training changed the unit model"
    );
    let unit = eval("unit");
    let mix = eval("merged");
    assert!(mix["perplexity"] != base["perplexity"] && mix["perplexity"] != unit["perplexity"]);
}

#[test]
fn bad_input_exits_non_zero_with_a_message_that_says_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.jsonl"),
        "{\"text\": \"fine\"}\n{\"text\": oops}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("ok.jsonl"), "{\"text\": \"fine\"}\n").unwrap();
    let fails = |args: &[&str], expected: &str| {
        let out = mixpool(dir.path(), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    };
    fails(
        &[
            "local", "pretrain", "--preset", "giant", "--data", "ok.jsonl", "--out", "m",
        ],
        "tiny, small, base-130m",
    );
    fails(
        &["local", "pretrain", "--data", "bad.jsonl", "--out", "m"],
        "line 2: not a JSON object",
    );
    fails(
        &[
            "local", "pretrain", "--data", "ok.jsonl", "--out", "m", "--tokens", "1000",
        ],
        "multiples of seq_len",
    );
    fails(
        &[
            "local", "pretrain", "--data", "ok.jsonl", "--out", "m", "--tokens", "4096",
        ],
        "training needs at least",
    );
    fails(
        &["local", "eval", "--model", "nowhere", "--data", "ok.jsonl"],
        "nowhere/config.json",
    );
    fails(&["local", "merge", "a", "b", "--out", "m"], "a/config.json");
    fails(
        &[
            "local", "pretrain", "--data", "ok.jsonl", "--out", "m", "--device", "tpu",
        ],
        "use auto, cpu or cuda:N",
    );
    assert!(
        !dir.path().join("m").exists(),
        "nothing is written for bad input"
    );
}
