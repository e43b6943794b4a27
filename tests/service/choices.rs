//! Eval sets of multiple-choice questions over HTTP: read in each shape they are found in
//! (and refused by line, with nothing stored, when a record is bad), scored by merges with
//! the figures the engine gives the exported merged model, ranked by bits per byte of the
//! gold answers, and refused by name where only held-out text goes.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::{Value, json};

use mixpool::engine::checkpoint::LoadedModel;
use mixpool::engine::choices::{self, PreparedChoices};
use mixpool::engine::eval::EvalConfig;
use tch::Device;

use crate::app::{App, corpus, spawn_app};

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/choices")
        .join(format!("{name}.jsonl"));
    std::fs::read_to_string(path).unwrap()
}

async fn pool() -> App {
    let app = spawn_app().await;
    for domain in ["code_python", "legal_licenses"] {
        let (status, body) = app
            .post(
                &format!("/v1/partitions?name={domain}&domain={domain}"),
                corpus(domain, 0, 8),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    app
}

#[tokio::test]
async fn question_sets_are_read_in_each_shape_and_bad_records_are_refused_by_line() {
    let app = pool().await;
    for (file, shape) in [
        ("arc", "arc"),
        ("hellaswag", "hellaswag"),
        ("piqa", "piqa"),
        ("harness", "lm_eval_harness"),
    ] {
        let body = fixture(file);
        let (status, created) = app
            .post(&format!("/v1/eval-sets?name={file}"), body.clone())
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert_eq!(created["shape"], shape, "{created}");
        assert_eq!(created["documents"], body.lines().count(), "{created}");
    }
    // Compressed, and named with kind=choices; text stays text.
    let native = "{\"context\": \"The capital of France is\", \"choices\": [\" Paris\", \" Rome\"], \"gold\": 0, \"task\": \"geo\"}\n";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, native.as_bytes()).unwrap();
    let (status, created) = app
        .post("/v1/eval-sets?name=geo&kind=choices", gz.finish().unwrap())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["shape"], "native");
    let (status, created) = app
        .post("/v1/eval-sets?name=prose", corpus("legal_licenses", 50, 2))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert!(created["shape"].is_null(), "{created}");

    let good = native.trim_end();
    let arc = r#"{"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "A"}"#;
    for (good, bad, says) in [
        (
            good,
            r#"{"context": "a", "choices": [" b", " c"], "gold": 5}"#,
            "gold 5 is out of range",
        ),
        (
            good,
            r#"{"context": "a", "choices": [" b"], "gold": 0}"#,
            "at least 2",
        ),
        (
            good,
            r#"{"context": "a", "choices": [" b", ""], "gold": 0}"#,
            "choice 1 is empty",
        ),
        (
            good,
            r#"{"goal": "g", "sol1": "a", "label": 0}"#,
            "not a question",
        ),
        (
            good,
            r#"{"ctx": "c", "endings": ["a", "b"], "label": 1}"#,
            "the hellaswag shape in a file of the native shape",
        ),
        (
            arc,
            &arc.replace("\"answerKey\": \"A\"", "\"answerKey\": \"E\""),
            "answerKey \"E\"",
        ),
        (
            arc,
            &arc.replace("\"label\": [\"A\", \"B\"]", "\"label\": [\"A\"]"),
            "1 labels for 2 texts",
        ),
    ] {
        let body = format!("{good}\n{good}\n{bad}\n");
        let (status, error) = app
            .post("/v1/eval-sets?name=broken&kind=choices", body)
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("line 3: ") && message.contains(says),
            "{message}"
        );
    }
    let (status, _) = app.get("/v1/eval-sets/broken").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing stored");
    let (status, error) = app
        .post("/v1/eval-sets?name=geo2&kind=quiz", native.to_string())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    let (status, error) = app
        .post("/v1/partitions?name=quiz&kind=choices", native.to_string())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixture_is_scored_on_questions_as_the_engine_scores_its_exported_merge() {
    let app = pool().await;
    let (status, created) = app.post("/v1/eval-sets?name=arc", fixture("arc")).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    app.post("/v1/eval-sets?name=prose", corpus("legal_licenses", 50, 2))
        .await;
    for domain in ["code_python", "legal_licenses"] {
        app.trained(domain).await;
    }
    let (status, score) = app
        .get("/v1/score?partitions=code_python,legal_licenses&eval=arc&wait=120")
        .await;
    assert_eq!(status, StatusCode::OK, "{score}");
    assert_eq!(score["n"], 6, "{score}");
    assert_eq!(score["per_task"]["default"]["n"], 6, "{score}");
    let bpb = score["bits_per_byte_gold"].as_f64().unwrap();
    assert!(bpb > 0.0 && bpb.is_finite(), "{score}");
    let close = |a: &Value, b: &Value| {
        let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
        (a - b).abs() <= 1e-12 * b.abs().max(1e-300)
    };
    assert!(close(&score["perplexity"], &json!(bpb.exp2())), "{score}");
    for figure in ["accuracy", "accuracy_raw"] {
        let a = score[figure].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&a) && (a * 6.0).fract() == 0.0,
            "{figure}: {a}"
        );
    }

    // The merged model exported, loaded and scored by the engine: the same figures.
    let dir = tempfile::tempdir().unwrap();
    let exported = dir.path().join("merged");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mixpool"))
        .env("MIXPOOL_TOKEN", &app.token)
        .args([
            "export",
            "--url",
            &app.url,
            "--partitions",
            "code_python,legal_licenses",
            "--out",
        ])
        .arg(&exported)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let model = LoadedModel::load(&exported, Device::Cpu).unwrap();
    let (questions, _) = choices::parse(fixture("arc").as_bytes()).unwrap();
    let local = PreparedChoices::new(&model, &questions, &EvalConfig::default())
        .unwrap()
        .evaluate(&model);
    let local = serde_json::to_value(&local).unwrap();
    // (Figures through JSON: equal to the last bit or two of the decimal form.)
    for figure in [
        "bits_per_byte_gold",
        "accuracy",
        "accuracy_raw",
        "n",
        "perplexity",
    ] {
        assert!(
            close(&score[figure], &local[figure]),
            "{figure}: {score} against {local}"
        );
    }
    let task = |r: &Value, key: &str| r["per_task"]["default"][key].clone();
    for figure in ["bits_per_byte_gold", "accuracy", "accuracy_raw", "n"] {
        assert!(
            close(&task(&score, figure), &task(&local, figure)),
            "{figure}"
        );
    }

    // A sweep ranks the mixtures on questions by bits per byte of the gold answers.
    let request =
        json!({"partitions": ["code_python", "legal_licenses"], "eval_sets": ["arc", "prose"]});
    let (status, sweep) = app.post("/v1/sweeps", request.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{sweep}");
    let id = sweep["id"].as_str().unwrap();
    let mut done = Value::Null;
    for _ in 0..1200 {
        let (_, s) = app.get(&format!("/v1/sweeps/{id}?limit=10")).await;
        if s["state"] == "succeeded" {
            done = s;
            break;
        }
        assert!(s["state"] != "failed", "{s}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let on_arc = done["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["eval_set"] == "arc")
        .unwrap();
    let ranking: Vec<f64> = on_arc["ranking"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["perplexity"].as_f64().unwrap())
        .collect();
    assert_eq!(ranking.len(), 3, "{on_arc}");
    assert!(ranking.windows(2).all(|w| w[0] <= w[1]), "{ranking:?}");
    assert!(ranking.contains(&score["perplexity"].as_f64().unwrap()));

    // The ensemble and the mean of units score questions from each unit's per-token NLLs
    // of the choices: a unit alone is its merged score exactly, and the mean of units is
    // the mean of the units' figures.
    let app = &app;
    let get = |proxy: &str, partitions: &str| {
        let path = format!("/v1/score?partitions={partitions}&eval=arc&proxy={proxy}&wait=600");
        async move {
            let (status, body) = app.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body
        }
    };
    let merged_alone = get("average", "code_python").await;
    let ensemble_alone = get("ensemble", "code_python").await;
    assert_eq!(ensemble_alone["proxy"], "ensemble");
    for key in [
        "bits_per_byte_gold",
        "accuracy",
        "accuracy_raw",
        "n",
        "perplexity",
        "per_task",
        "tokens",
    ] {
        assert_eq!(ensemble_alone[key], merged_alone[key], "{key}");
    }
    let other = get("average", "legal_licenses").await;
    let units = get("units", "code_python,legal_licenses").await;
    let figure = |r: &Value, key: &str| r[key].as_f64().unwrap_or_else(|| panic!("{key}: {r}"));
    for key in ["bits_per_byte_gold", "accuracy", "accuracy_raw"] {
        let want = (figure(&merged_alone, key) + figure(&other, key)) / 2.0;
        assert!((figure(&units, key) - want).abs() < 1e-12, "{key}: {units}");
    }
    let ensemble = get("ensemble", "code_python,legal_licenses").await;
    assert_eq!(ensemble["n"], merged_alone["n"], "{ensemble}");
    // Per token −ln(½p_a + ½p_b) ≤ ½(−ln p_a) + ½(−ln p_b) (Jensen): the ensemble's bits
    // per byte of the gold answers is at most the mean of the two units', and is neither.
    let (a, b) = (
        figure(&merged_alone, "bits_per_byte_gold"),
        figure(&other, "bits_per_byte_gold"),
    );
    let e = figure(&ensemble, "bits_per_byte_gold");
    assert!(
        e <= (a + b) / 2.0 + 1e-12 && e != a && e != b,
        "{e} against {a} and {b}"
    );
}

/// Validations on a set of questions: the report gives each proxy's accuracy against the
/// trained model's, from the points it shows.
#[tokio::test]
async fn validations_on_questions_report_each_proxys_accuracy_against_training() {
    let app = pool().await;
    let (status, body) = app
        .post(
            "/v1/partitions?name=tech_docs&domain=tech_docs",
            corpus("tech_docs", 0, 8),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    app.post("/v1/eval-sets?name=arc", fixture("arc")).await;
    for domain in ["code_python", "legal_licenses", "tech_docs"] {
        app.trained(domain).await;
    }
    let mixtures = json!([
        ["code_python", "legal_licenses"],
        ["code_python", "tech_docs"],
        ["legal_licenses", "tech_docs"],
        ["code_python", "legal_licenses", "tech_docs"]
    ]);
    let request = json!({"mixtures": mixtures, "eval_sets": ["arc"]});
    let (status, created) = app.post("/v1/validations", request.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let mut report = Value::Null;
    for _ in 0..1800 {
        let (_, r) = app.get("/v1/validations/report?eval=arc").await;
        if r["sets"][0]["n"] == 4 {
            report = r;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let set = &report["sets"][0];
    assert_eq!(set["n"], 4, "{report}");
    let points = set["points"].as_array().unwrap();
    let (_, list) = app.get("/v1/validations").await;
    for p in points {
        let v = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == p["validation"])
            .unwrap();
        assert_eq!(p["true_accuracy"], v["results"][0]["accuracy"], "{p} {v}");
    }
    let accuracy = set["accuracy"]
        .as_object()
        .expect("a question set's accuracy");
    for proxy in [
        "merged_uniform",
        "merged_tokens",
        "mean_of_units",
        "ensemble",
        "fisher",
        "task_vectors",
    ] {
        let c = accuracy
            .get(proxy)
            .unwrap_or_else(|| panic!("{proxy}: {set}"));
        assert_eq!(c["n"], 4, "{proxy}: {c}");
        let (x, y): (Vec<f64>, Vec<f64>) = points
            .iter()
            .map(|p| {
                (
                    p["accuracies"][proxy].as_f64().unwrap(),
                    p["true_accuracy"].as_f64().unwrap(),
                )
            })
            .unzip();
        assert_eq!(
            c["spearman"].as_f64(),
            mixpool::stats::spearman(&x, &y),
            "{proxy}"
        );
        assert_eq!(
            c["pearson"].as_f64(),
            mixpool::stats::pearson(&x, &y),
            "{proxy}"
        );
    }
}
