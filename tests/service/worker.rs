use std::time::Duration;

use bytes::Bytes;
use mixpool::engine::checkpoint::LoadedModel;
use mixpool::engine::data::{self, Format};
use mixpool::engine::train::{self, Schedule, TrainConfig, TrainOptions};
use mixpool::ingest::{Upload, ingest};
use mixpool::registry::datasets::Kind;
use mixpool::registry::{bases, jobs, models, recipes};
use mixpool::store::{S3Config, Store, keys};
use mixpool::worker::Worker;
use tch::Device;
use uuid::Uuid;

use crate::helpers::{fresh_db, small_llama, store_base};

fn settings() -> TrainConfig {
    TrainConfig {
        tokens: 12 * 128,
        batch_tokens: 4 * 64,
        micro_batch: 2,
        seq_len: 64,
        lr: 3e-3,
        schedule: Schedule::Constant,
        checkpoint_every: 3,
        ..TrainConfig::default()
    }
}

struct Setup {
    worker: Worker,
    base_dir: tempfile::TempDir,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// A database, a local store holding a small base, and a worker on the CPU.
async fn setup() -> Setup {
    let pool = fresh_db().await;
    let (store_dir, work_dir, base_dir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let store = Store::open(
        &format!("file://{}", store_dir.path().display()),
        &S3Config::default(),
    )
    .unwrap();
    tch::set_num_threads(1);
    store_base(&pool, &store, &small_llama(), 3, base_dir.path()).await;
    let worker = Worker::new(
        pool,
        store,
        Device::Cpu,
        "test-worker".into(),
        work_dir.path(),
        1 << 30,
        1 << 30,
    )
    .unwrap();
    let worker = Worker {
        kinds: vec!["train", "score"],
        lease: Duration::from_secs(30),
        ..worker
    };
    Setup {
        worker,
        base_dir,
        _dirs: (store_dir, work_dir),
    }
}

async fn partition(s: &Setup, name: &str, text: String) -> Uuid {
    let upload = Upload {
        kind: Kind::Partition,
        name: name.into(),
        domain: None,
        tags: vec![],
        format: Some(Format::Jsonl),
        max_bytes: 1 << 24,
        train: true,
        choices: None,
        text_field: None,
        parquet: false,
    };
    let body = futures::stream::iter(vec![Ok(Bytes::from(text))]);
    ingest(&s.worker.pool, &s.worker.store, &upload, body)
        .await
        .unwrap()
        .into_inner()
        .id
}

/// The unit model of `partition` for the base and the "unit" recipe, with its job queued.
async fn queue_unit_model(s: &Setup, partition: Uuid) -> models::UnitModel {
    let pool = &s.worker.pool;
    let mut db = pool.acquire().await.unwrap();
    let recipe = recipes::insert(&mut db, "unit", &settings())
        .await
        .unwrap()
        .into_inner();
    let base = bases::find(pool, "base").await.unwrap().unwrap();
    mixpool::jobs::train::ensure(&mut db, base.id, recipe.id, partition)
        .await
        .unwrap()
        .into_inner()
}

fn corpus_head(lines: usize) -> String {
    let path = crate::helpers::corpus_path("code_python");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .take(lines)
        .map(|l| format!("{l}\n"))
        .collect()
}

#[tokio::test]
async fn a_train_job_produces_the_unit_model_that_local_training_produces() {
    let s = setup().await;
    let pool = &s.worker.pool;
    let text = corpus_head(20);
    let partition = partition(&s, "python", text.clone()).await;
    let model = queue_unit_model(&s, partition).await;

    assert!(s.worker.try_run_one().await.unwrap());
    let job = jobs::get(pool, model.job_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    assert_eq!(
        (job.progress, job.message.as_deref()),
        (1.0, Some("step 6/6"))
    );
    let model = models::get(pool, model.id).await.unwrap().unwrap();
    assert_eq!(model.state, "ready");
    assert_eq!(
        job.result.unwrap()["weights_sha256"],
        model.weights_sha256.clone().unwrap()
    );

    // The stored weights equal an engine run on the same base, data and recipe.
    let out = tempfile::tempdir().unwrap();
    std::fs::copy(
        s.base_dir.path().join("config.json"),
        out.path().join("config.json"),
    )
    .unwrap();
    s.worker
        .store
        .download_verified(
            &keys::model(&model.id, "model.safetensors"),
            model.weights_sha256.as_ref().unwrap(),
            &out.path().join("model.safetensors"),
        )
        .await
        .unwrap();
    let trained = LoadedModel::load(out.path(), Device::Cpu).unwrap();
    let local = LoadedModel::load(s.base_dir.path(), Device::Cpu).unwrap();
    let docs = data::parse_documents(text.as_bytes(), Some(Format::Jsonl)).unwrap();
    let tokens = data::tokenize(&docs, &local.tokenizer).unwrap();
    train::train(&local, &tokens, &settings(), TrainOptions::default()).unwrap();
    let mut a: Vec<_> = trained.vs.variables().into_iter().collect();
    let mut b: Vec<_> = local.vs.variables().into_iter().collect();
    a.sort_by(|x, y| x.0.cmp(&y.0));
    b.sort_by(|x, y| x.0.cmp(&y.0));
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.equal(y), "{name} differs from local training");
    }

    assert!(!s.worker.try_run_one().await.unwrap(), "the queue is empty");
    assert!(
        std::fs::read_dir(&s.worker.work_dir)
            .unwrap()
            .next()
            .is_none(),
        "scratch space is cleaned up"
    );
}

#[tokio::test]
async fn a_partition_too_small_to_train_on_fails_its_job_for_good() {
    let s = setup().await;
    let pool = &s.worker.pool;
    let partition = partition(&s, "tiny", "{\"text\": \"too short\"}\n".into()).await;
    let model = queue_unit_model(&s, partition).await;
    assert!(s.worker.try_run_one().await.unwrap());
    let job = jobs::get(pool, model.job_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (job.state.as_str(), job.attempts),
        ("failed", 1),
        "bad data is not retried"
    );
    assert!(job.error.unwrap().contains("training needs at least"));
    assert_eq!(
        models::get(pool, model.id).await.unwrap().unwrap().state,
        "failed"
    );
}

/// Registers the pending base `name` (id `id`), queues its pretrain job and runs it on a
/// worker of that kind; returns the job as it ended.
async fn pretrain(
    s: &Setup,
    id: Uuid,
    name: &str,
    partition: Uuid,
    config: TrainConfig,
) -> jobs::Job {
    let pool = &s.worker.pool;
    let mut db = pool.acquire().await.unwrap();
    let base = bases::insert(&mut db, id, name, &small_llama(), None)
        .await
        .unwrap();
    assert_eq!(base.state, "pending");
    let payload = mixpool::jobs::PretrainJob {
        base: id,
        partition,
        config,
        train_all: false,
    };
    let (job, _) = jobs::enqueue(
        &mut db,
        &jobs::NewJob::new("pretrain", serde_json::to_value(&payload).unwrap()),
    )
    .await
    .unwrap();
    drop(db);
    let worker = Worker {
        kinds: vec!["pretrain"],
        ..s.worker.clone()
    };
    assert!(worker.try_run_one().await.unwrap());
    jobs::get(pool, job.id).await.unwrap().unwrap()
}

#[tokio::test]
async fn a_pretrain_job_trains_a_pending_base_from_its_seed_and_makes_it_ready() {
    let s = setup().await;
    let pool = &s.worker.pool;
    let text = corpus_head(20);
    let partition = partition(&s, "seed-sample", text.clone()).await;
    let id = Uuid::new_v4();
    let config = TrainConfig {
        seed: 11,
        ..settings()
    };
    let job = pretrain(&s, id, "fresh", partition, config.clone()).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    let base = bases::find(pool, "fresh").await.unwrap().unwrap();
    assert_eq!(base.state, "ready");
    assert_eq!(
        bases::latest_ready(pool).await.unwrap().unwrap().id,
        id,
        "the newest ready base is the default"
    );

    // The stored weights equal the engine's: initialised from the seed, then trained.
    let out = tempfile::tempdir().unwrap();
    mixpool::engine::checkpoint::write_config(out.path(), &small_llama()).unwrap();
    s.worker
        .store
        .download_verified(
            &keys::base(&id, "model.safetensors"),
            base.weights_sha256.as_ref().unwrap(),
            &out.path().join("model.safetensors"),
        )
        .await
        .unwrap();
    let stored = LoadedModel::load(out.path(), Device::Cpu).unwrap();
    let local = LoadedModel::init(small_llama(), 11, Device::Cpu).unwrap();
    let docs = data::parse_documents(text.as_bytes(), Some(Format::Jsonl)).unwrap();
    let tokens = data::tokenize(&docs, &local.tokenizer).unwrap();
    train::train(&local, &tokens, &config, TrainOptions::default()).unwrap();
    let initial = LoadedModel::init(small_llama(), 11, Device::Cpu).unwrap();
    for (name, x) in stored.vs.variables() {
        let y = &local.vs.variables()[&name];
        assert!(x.equal(y), "{name} differs from local pre-training");
        assert!(
            !x.equal(&initial.vs.variables()[&name]),
            "{name} was trained"
        );
    }
}

#[tokio::test]
async fn a_pretrain_job_that_cannot_train_leaves_its_base_failed() {
    let s = setup().await;
    let pool = &s.worker.pool;
    let partition = partition(&s, "too-short", "{\"text\": \"x\"}\n".into()).await;
    let id = Uuid::new_v4();
    pretrain(&s, id, "doomed", partition, settings()).await;
    let base = bases::find(pool, "doomed").await.unwrap().unwrap();
    assert_eq!((base.state.as_str(), base.weights_sha256), ("failed", None));
    let job = bases::pretrain_job(pool, id).await.unwrap().unwrap();
    assert_eq!(job.state, "failed");
}

mod scores {
    use mixpool::engine::ensemble::{TokenNll, ensemble as engine_ensemble};
    use mixpool::engine::eval::{EvalConfig, Prepared, evaluate};
    use mixpool::engine::merge::merge_model_dirs;
    use mixpool::mixture::{Mixture, MixtureError, Weighting};
    use mixpool::proxy::Proxy;
    use mixpool::service::scoring::{ScoreRequest, ScoreStatus, request};

    use super::*;

    #[tokio::test]
    async fn a_mixture_is_scored_once_then_served_from_the_cache() {
        let s = setup().await;
        let pool = &s.worker.pool;
        let corpus = corpus_head(40);
        let lines: Vec<&str> = corpus.lines().collect();
        let a = partition(&s, "first", lines[..20].join("\n")).await;
        let b = partition(&s, "second", lines[20..].join("\n")).await;
        let eval_text = "{\"text\": \"def main():\\n    print('hello')\\n\", \"domain\": \"code\"}\n{\"text\": \"The quick brown fox.\", \"domain\": \"prose\"}\n";
        let upload = Upload {
            kind: Kind::EvalSet,
            name: "held-out".into(),
            domain: None,
            tags: vec![],
            format: None,
            max_bytes: 1 << 20,
            train: true,
            choices: None,
            text_field: None,
            parquet: false,
        };
        let eval_set = ingest(
            pool,
            &s.worker.store,
            &upload,
            futures::stream::iter(vec![Ok(Bytes::from(eval_text))]),
        )
        .await
        .unwrap()
        .into_inner();
        let recipe = recipes::insert(&mut pool.acquire().await.unwrap(), "unit", &settings())
            .await
            .unwrap()
            .into_inner();
        let base = bases::find(pool, "base").await.unwrap().unwrap();
        let req = |partitions: Vec<Uuid>| ScoreRequest {
            base: base.id,
            recipe: recipe.id,
            mixture: Mixture::new(&partitions, None, Weighting::Uniform).unwrap(),
            proxy: Proxy::Average,
            eval_set: eval_set.id,
            eval: EvalConfig::default(),
        };

        let not_ready = request(pool, &req(vec![a, b])).await.unwrap();
        assert!(
            matches!(not_ready, ScoreStatus::ModelsNotReady(ref m) if m.len() == 2 && m.iter().all(|(_, model)| model.is_none()))
        );
        for p in [a, b] {
            mixpool::jobs::train::ensure(&mut pool.acquire().await.unwrap(), base.id, recipe.id, p)
                .await
                .unwrap();
        }
        assert!(
            matches!(request(pool, &req(vec![a, b])).await.unwrap(), ScoreStatus::ModelsNotReady(ref m) if m[0].1.is_some())
        );
        while s.worker.try_run_one().await.unwrap() {}

        let ScoreStatus::Pending { job, created: true } =
            request(pool, &req(vec![a, b])).await.unwrap()
        else {
            panic!("not queued")
        };
        let ScoreStatus::Pending {
            job: same,
            created: false,
        } = request(pool, &req(vec![b, a])).await.unwrap()
        else {
            panic!("an identical request must share the job")
        };
        assert_eq!(same.id, job.id);
        assert!(s.worker.try_run_one().await.unwrap());
        let done = jobs::get(pool, job.id).await.unwrap().unwrap();
        assert_eq!(done.state, "succeeded", "{:?}", done.error);

        let jobs_before = jobs::list(pool, None, None, None, 100).await.unwrap().len();
        let ScoreStatus::Cached(score) = request(pool, &req(vec![b, a])).await.unwrap() else {
            panic!("not cached")
        };
        assert_eq!(
            jobs::list(pool, None, None, None, 100).await.unwrap().len(),
            jobs_before,
            "a cached score runs no job"
        );
        let ppl = score.result["perplexity"].as_f64().unwrap();
        assert!(ppl > 1.0 && ppl < 257.0, "{ppl}");
        assert_eq!(score.result["per_domain"].as_object().unwrap().len(), 2);

        // The cached figure is the merge of the stored unit models, evaluated here directly.
        let dirs: Vec<std::path::PathBuf> = {
            let units = models::for_partitions(pool, base.id, recipe.id, &[a, b])
                .await
                .unwrap();
            let mut dirs = Vec::new();
            for unit in units {
                let dir = s.worker.work_dir.join(format!("check-{}", unit.id));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::copy(
                    s.base_dir.path().join("config.json"),
                    dir.join("config.json"),
                )
                .unwrap();
                let key = keys::model(&unit.id, "model.safetensors");
                s.worker
                    .store
                    .download_verified(
                        &key,
                        unit.weights_sha256.as_ref().unwrap(),
                        &dir.join("model.safetensors"),
                    )
                    .await
                    .unwrap();
                dirs.push(dir);
            }
            dirs
        };
        let merged = s.worker.work_dir.join("check-merged");
        merge_model_dirs(&dirs, &[0.5, 0.5], Device::Cpu, &merged).unwrap();
        let model = LoadedModel::load(&merged, Device::Cpu).unwrap();
        let docs = data::parse_documents(eval_text.as_bytes(), None).unwrap();
        let local = evaluate(&model, &docs, &EvalConfig::default()).unwrap();
        assert_eq!(local.total.perplexity, ppl);

        // A repeated partition is refused when the mixture is made, before any request.
        assert!(matches!(
            Mixture::new(&[a, a], None, Weighting::Uniform),
            Err(MixtureError::Repeated(_))
        ));
        let explicit = ScoreRequest {
            mixture: Mixture::new(&[a, b], Some(&[1.0, 3.0]), Weighting::Explicit).unwrap(),
            ..req(vec![a, b])
        };
        assert!(
            matches!(
                request(pool, &explicit).await.unwrap(),
                ScoreStatus::Pending { created: true, .. }
            ),
            "other weights, another score"
        );
        assert!(s.worker.try_run_one().await.unwrap());

        // The ensemble proxy: a unit alone is that unit's merge score exactly; the mixture is
        // −ln Σ α p of the units' own per-token NLLs, evaluated here from the stored models.
        let ensemble = |partitions: Vec<Uuid>| ScoreRequest {
            proxy: Proxy::Ensemble,
            ..req(partitions)
        };
        let worker = &s.worker;
        let scored = |r: ScoreRequest| async move {
            let job = match request(pool, &r).await.unwrap() {
                ScoreStatus::Pending { job, .. } => job,
                ScoreStatus::Cached(score) => return (score.result, None),
                other => panic!("not queued: {other:?}"),
            };
            assert!(worker.try_run_one().await.unwrap());
            let job = jobs::get(pool, job.id).await.unwrap().unwrap();
            assert_eq!(job.state, "succeeded", "{:?}", job.error);
            let ScoreStatus::Cached(score) = request(pool, &r).await.unwrap() else {
                panic!("not stored")
            };
            (score.result, job.result.unwrap()["forward_passes"].as_u64())
        };
        let (alone, passes) = scored(ensemble(vec![a])).await;
        assert_eq!(passes, Some(1), "the unit's first sight of the eval set");
        let (merged_alone, _) = scored(req(vec![a])).await;
        assert_eq!(
            alone, merged_alone,
            "an ensemble of one is the unit's score exactly"
        );
        let (both, passes) = scored(ensemble(vec![a, b])).await;
        assert_eq!(passes, Some(1), "only b's per-token NLLs were missing");
        let (tokens, passes) = scored(ScoreRequest {
            mixture: Mixture::new(&[a, b], Some(&[1.0, 3.0]), Weighting::Explicit).unwrap(),
            ..ensemble(vec![a, b])
        })
        .await;
        assert_eq!(passes, Some(0), "stored per-token NLLs are reused");
        assert_ne!(tokens, both);
        let prepared = Prepared::new(&model, &docs, &EvalConfig::default()).unwrap();
        let unit_nll = |dir: &std::path::Path| TokenNll {
            layout: mixpool::engine::ensemble::NllLayout::Text(prepared.layout().clone()),
            nll: prepared.token_nll(&LoadedModel::load(dir, Device::Cpu).unwrap(), 16),
        };
        let (na, nb) = (unit_nll(&dirs[0]), unit_nll(&dirs[1]));
        let local = engine_ensemble(&[&na, &nb], &[0.5, 0.5]).unwrap();
        assert_eq!(both["perplexity"].as_f64(), Some(local.perplexity()));
        // Between the two units' own perplexities, and never above the worse.
        let own = |t: &TokenNll| t.totals().perplexity();
        let ppl = local.perplexity();
        assert!(ppl <= own(&na).max(own(&nb)), "{ppl}");

        // The task-vector merge: base + λ (average − base), here with λ = 2 against the same
        // arithmetic on the stored models; λ = 1 is the average's own score.
        let task_vectors = |scale: &str| ScoreRequest {
            proxy: Proxy::parse(Some(&format!("task_vectors@{scale}"))).unwrap(),
            ..req(vec![a, b])
        };
        let (doubled, _) = scored(task_vectors("2")).await;
        let stored = mixpool::registry::scores::get(pool, &task_vectors("2").key())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.merge_method, "task_vectors@2");
        let average = LoadedModel::load(&merged, Device::Cpu).unwrap();
        let base_model = LoadedModel::load(s.base_dir.path(), Device::Cpu).unwrap();
        let mut vars = average.vs.variables();
        tch::no_grad(|| {
            for (name, theta) in base_model.vs.variables() {
                let avg = vars.get_mut(&name).unwrap();
                let b = theta.to_kind(tch::Kind::Double);
                let moved = &b + (avg.to_kind(tch::Kind::Double) - &b) * 2.0;
                avg.copy_(&moved.to_kind(avg.kind()));
            }
        });
        let local = evaluate(&average, &docs, &EvalConfig::default()).unwrap();
        let got = doubled["perplexity"].as_f64().unwrap();
        let rel = (got - local.total.perplexity).abs() / local.total.perplexity;
        assert!(rel < 1e-4, "{got} against {}", local.total.perplexity);
        let (one, _) = scored(task_vectors("1")).await;
        let (average, _) = scored(req(vec![a, b])).await;
        assert_eq!(one, average);
        assert_ne!(doubled["perplexity"], average["perplexity"]);

        // The Fisher-weighted merge: trained units keep their estimate, and the merge differs
        // from the plain one; without an estimate it is the plain average, and says so.
        let units = models::for_partitions(pool, base.id, recipe.id, &[a, b])
            .await
            .unwrap();
        assert!(units.iter().all(|u| u.fisher_sha256.is_some()));
        let fisher = |partitions: Vec<Uuid>| ScoreRequest {
            proxy: Proxy::Fisher,
            ..req(partitions)
        };
        let (weighted, _) = scored(fisher(vec![a, b])).await;
        assert!(weighted["note"].is_null(), "{weighted}");
        let (plain, _) = scored(req(vec![a, b])).await;
        assert_ne!(weighted["perplexity"], plain["perplexity"]);
        let (alone, _) = scored(fisher(vec![b])).await;
        let (merged_alone, _) = scored(req(vec![b])).await;
        assert_eq!(alone["perplexity"], merged_alone["perplexity"]);
        sqlx::query("update models set fisher_sha256 = null where partition_id = $1")
            .bind(a)
            .execute(pool)
            .await
            .unwrap();
        let (fallback, _) = scored(ScoreRequest {
            mixture: Mixture::new(&[a, b], Some(&[1.0, 3.0]), Weighting::Explicit).unwrap(),
            ..fisher(vec![a, b])
        })
        .await;
        let (explicit, _) = scored(ScoreRequest {
            mixture: Mixture::new(&[a, b], Some(&[1.0, 3.0]), Weighting::Explicit).unwrap(),
            ..req(vec![a, b])
        })
        .await;
        assert_eq!(fallback["perplexity"], explicit["perplexity"]);
        assert!(
            fallback["note"]
                .as_str()
                .unwrap()
                .contains("no Fisher estimate"),
            "{fallback}"
        );
    }
}
