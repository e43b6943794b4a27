//! Hugging Face checkpoints over HTTP: imported as a base, trained, scored, and a mixture
//! exported as a merged model.

use reqwest::StatusCode;
use serde_json::Value;

use crate::app::{corpus, spawn_app};

/// A tar of a directory's files, as `mixpool bases import` sends it.
fn tar_of(dir: &std::path::Path) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        tar.append_path_with_name(&path, path.file_name().unwrap())
            .unwrap();
    }
    tar.into_inner().unwrap()
}

fn hf_fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

// Multi-threaded: the command line runs as a blocking child process meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_checkpoint_trains_scores_and_exports_the_merged_model() {
    let app = spawn_app().await;
    let bases_before = app.get("/v1/bases").await.1["items"]
        .as_array()
        .unwrap()
        .len();
    // Bad imports change nothing.
    let broken = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(hf_fixture("gpt2")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, broken.path().join(path.file_name().unwrap())).unwrap();
    }
    let config = broken.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("GPT2LMHeadModel", "T5ForConditionalGeneration"),
    )
    .unwrap();
    for (path, body, status, code) in [
        (
            "/v1/bases/import?name=x",
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "empty_body",
        ),
        (
            "/v1/bases/import?name=x",
            b"not a tar at all, just some bytes".repeat(40),
            StatusCode::BAD_REQUEST,
            "invalid_archive",
        ),
        (
            "/v1/bases/import?name=x",
            tar_of(broken.path()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_checkpoint",
        ),
        (
            "/v1/bases/import?name=../x",
            tar_of(&hf_fixture("gpt2")),
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            "/v1/bases/import?name=base",
            tar_of(&hf_fixture("gpt2")),
            StatusCode::CONFLICT,
            "name_taken",
        ),
    ] {
        let (got, answer) = app.post(path, body).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {answer}"
        );
    }
    let (_, answer) = app
        .post("/v1/bases/import?name=x", tar_of(broken.path()))
        .await;
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("T5ForConditionalGeneration")
    );
    assert_eq!(
        app.get("/v1/bases").await.1["items"]
            .as_array()
            .unwrap()
            .len(),
        bases_before
    );

    // The command line's import, against this server, of a checkpoint as found (fields
    // converters add, a chat template): refused with --strict, accepted and reported without.
    let strict = std::process::Command::new(env!("CARGO_BIN_EXE_mixpool"))
        .env("MIXPOOL_TOKEN", &app.token)
        .args([
            "bases",
            "import",
            "--url",
            &app.url,
            "--name",
            "converted",
            "--strict",
        ])
        .arg(hf_fixture("llama_converted"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&strict.stderr);
    assert!(
        !strict.status.success() && stderr.contains("_model_name_or_path"),
        "{stderr}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mixpool"))
        .env("MIXPOOL_TOKEN", &app.token)
        .args(["bases", "import", "--url", &app.url, "--name", "converted"])
        .arg(hf_fixture("llama_converted"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            base["state"].as_str(),
            base["import"]["architecture"].as_str()
        ),
        (Some("ready"), Some("LlamaForCausalLM"))
    );
    assert!(base["files"]["chat_template.jinja"].is_string(), "{base}");
    let ignored: Vec<&str> = base["import"]["ignored"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["field"].as_str().unwrap())
        .collect();
    assert!(ignored.contains(&"rope_interleaved"), "{base}");
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_mixpool"))
        .env("MIXPOOL_TOKEN", &app.token)
        .args(["bases", "import", "--url", &app.url, "--name", "converted"])
        .arg(hf_fixture("llama_converted"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("is taken"), "{stderr}");

    // Unit models of the imported base, with its BPE tokenizer, scored and exported.
    let quick = serde_json::json!({"name": "quick64", "tokens": 1024, "batch_tokens": 256, "micro_batch": 4, "seq_len": 64});
    assert_eq!(
        app.post("/v1/recipes", quick.to_string()).await.0,
        StatusCode::CREATED
    );
    for (name, domain) in [("py", "code_python"), ("law", "legal_licenses")] {
        let (_, upload) = app
            .post(&format!("/v1/partitions?name={name}"), corpus(domain, 0, 8))
            .await;
        assert_eq!(upload["models"][0]["base_id"], base["id"]);
    }
    app.post(
        "/v1/partitions?name=idle&train=false",
        corpus("tech_docs", 0, 3),
    )
    .await;
    let eval = corpus("tech_docs", 5, 2);
    app.post("/v1/eval-sets?name=docs", eval.clone()).await;
    app.trained("py").await;
    app.trained("law").await;
    let (status, score) = app
        .get("/v1/score?partitions=py,law&eval=docs&wait=120")
        .await;
    assert_eq!(status, StatusCode::OK, "{score}");

    let (status, body) = app
        .get("/v1/mixtures/export?partitions=py,idle&train=false")
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("models_not_ready"))
    );
    let (status, body) = app.get("/v1/mixtures/export?partitions=py,idle").await;
    assert_eq!(
        (status, body["training"][0]["partition"].as_str()),
        (StatusCode::ACCEPTED, Some("idle")),
        "the missing unit model is queued: {body}"
    );
    let (status, _) = app.get("/v1/mixtures/export?partitions=py,nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let dir = tempfile::tempdir().unwrap();
    let exported = dir.path().join("merged");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mixpool"))
        .env("MIXPOOL_TOKEN", &app.token)
        .args([
            "export",
            "--url",
            &app.url,
            "--partitions",
            "py,law",
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
    for file in [
        "config.json",
        "chat_template.jinja",
        "tokenizer_config.json",
        "tokenizer.json",
    ] {
        assert_eq!(
            std::fs::read(exported.join(file)).unwrap(),
            std::fs::read(hf_fixture("llama_converted").join(file)).unwrap(),
            "the checkpoint's own {file}, through import, training, merging and export"
        );
    }
    // A worker merged it once (an `export` job); asked again, it comes from the store.
    let exports = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from jobs where kind = 'export'")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    assert_eq!(exports().await, 1);
    let again = app
        .client
        .get(app.url("/v1/mixtures/export?partitions=law,py"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let tar = again.bytes().await.unwrap();
    let mut archive = tar::Archive::new(&tar[..]);
    let weights = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().ends_with("model.safetensors"))
        .map(|mut e| {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
            bytes
        })
        .unwrap();
    assert_eq!(
        weights,
        std::fs::read(exported.join("model.safetensors")).unwrap()
    );
    assert_eq!(exports().await, 1);
    // A stored tar removed by hand is merged again, not answered with an error.
    for key in app.store.list("exports").await.unwrap() {
        app.store.delete(&key).await.unwrap();
    }
    let remade = app
        .client
        .get(app.url("/v1/mixtures/export?partitions=law,py"))
        .send()
        .await
        .unwrap();
    assert_eq!(remade.status(), StatusCode::OK);
    let remade = remade.bytes().await.unwrap();
    let mut archive = tar::Archive::new(&remade[..]);
    let mut entry = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().ends_with("model.safetensors"))
        .unwrap();
    let mut again = Vec::new();
    std::io::Read::read_to_end(&mut entry, &mut again).unwrap();
    assert_eq!(again, weights, "the same merge");
    assert_eq!(exports().await, 2);
    // Imported again, the exported model gives the perplexity the service reported.
    let reimported = dir.path().join("reimported");
    mixpool::engine::hf::import(&exported, &reimported, Default::default()).unwrap();
    let model =
        mixpool::engine::checkpoint::LoadedModel::load(&reimported, tch::Device::Cpu).unwrap();
    let docs = mixpool::engine::data::parse_documents(
        eval.as_bytes(),
        Some(mixpool::engine::data::Format::Jsonl),
    )
    .unwrap();
    let result = mixpool::engine::eval::evaluate(&model, &docs, &Default::default()).unwrap();
    let reported = score["perplexity"].as_f64().unwrap();
    assert!(
        ((result.total.perplexity - reported) / reported).abs() < 1e-6,
        "{} vs {reported}",
        result.total.perplexity
    );

    // A checkpoint already in the object store is imported from there.
    let folder = app._dirs.0.path().join("imports/mistral");
    std::fs::create_dir_all(&folder).unwrap();
    for entry in std::fs::read_dir(hf_fixture("mistral")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, folder.join(path.file_name().unwrap())).unwrap();
    }
    let (status, missing) = app
        .post(
            "/v1/bases/import?name=m&from_store=imports/nothing",
            Vec::new(),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    let (status, imported) = app
        .post(
            "/v1/bases/import?name=m&from_store=imports/mistral",
            Vec::new(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{imported}");
    assert_eq!(imported["import"]["architecture"], "MistralForCausalLM");
}
