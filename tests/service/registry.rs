use mixpool::engine::train::TrainConfig;
use mixpool::registry::datasets::{self, Kind, NewDataset};
use mixpool::registry::{Created, RegistryError, recipes};

use crate::helpers::fresh_db;

fn dataset(name: &str, sha: &str) -> NewDataset {
    NewDataset {
        name: name.into(),
        domain: Some("code".into()),
        tags: vec!["python".into()],
        sha256: sha.into(),
        object_sha256: format!("obj-{sha}"),
        bytes: 10,
        documents: 2,
        shape: None,
        train: true,
        sources: None,
    }
}

#[tokio::test]
async fn the_same_bytes_are_one_dataset_and_a_name_keeps_its_content() {
    let pool = fresh_db().await;
    let mut db = pool.acquire().await.unwrap();
    for kind in [Kind::Partition, Kind::EvalSet] {
        let first = datasets::insert(&mut db, kind, &dataset("stdlib", "aaa"))
            .await
            .unwrap();
        assert!(first.is_new());
        let again = datasets::insert(&mut db, kind, &dataset("stdlib-copy", "aaa"))
            .await
            .unwrap();
        assert!(
            !again.is_new(),
            "identical content is the existing {}",
            kind.noun()
        );
        let (first, again) = (first.into_inner(), again.into_inner());
        assert_eq!((again.id, again.name.as_str()), (first.id, "stdlib"));

        match datasets::insert(&mut db, kind, &dataset("stdlib", "bbb")).await {
            Err(RegistryError::NameTaken { name, .. }) => assert_eq!(name, "stdlib"),
            other => panic!("{other:?}"),
        }
        assert!(
            datasets::find(&pool, kind, "stdlib")
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            datasets::find(&pool, kind, &first.id.to_string())
                .await
                .unwrap()
                .unwrap()
                .sha256,
            "aaa"
        );
        assert!(
            datasets::find(&pool, kind, "missing")
                .await
                .unwrap()
                .is_none()
        );
    }
    let partition = datasets::find(&pool, Kind::Partition, "stdlib")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (partition.domain.as_deref(), partition.tags.as_slice()),
        (Some("code"), &["python".to_string()][..])
    );
    let eval_set = datasets::find(&pool, Kind::EvalSet, "stdlib")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        eval_set.domain, None,
        "evaluation sets carry the domain per document instead"
    );
}

#[tokio::test]
async fn datasets_list_newest_first_in_pages() {
    let pool = fresh_db().await;
    let mut db = pool.acquire().await.unwrap();
    for i in 0..5 {
        datasets::insert(
            &mut db,
            Kind::Partition,
            &dataset(&format!("p{i}"), &format!("sha{i}")),
        )
        .await
        .unwrap();
    }
    let page = datasets::list(&pool, Kind::Partition, None, 2)
        .await
        .unwrap();
    let last = page.last().unwrap();
    let rest = datasets::list(&pool, Kind::Partition, Some((last.created_at, last.id)), 10)
        .await
        .unwrap();
    let names: Vec<_> = page.iter().chain(&rest).map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["p4", "p3", "p2", "p1", "p0"]);
    assert!(
        datasets::list(&pool, Kind::EvalSet, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn equal_settings_are_one_recipe() {
    let pool = fresh_db().await;
    let mut db = pool.acquire().await.unwrap();
    let unit = TrainConfig::default();
    let first = recipes::insert(&mut db, "unit", &unit).await.unwrap();
    assert!(first.is_new());
    let same = recipes::insert(&mut db, "unit-again", &unit).await.unwrap();
    assert!(matches!(&same, Created::Existing(r) if r.name == "unit"));
    let err = recipes::insert(
        &mut db,
        "unit",
        &TrainConfig {
            lr: 1e-3,
            ..unit.clone()
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("\"unit\" is taken"), "{err}");
    let faster = recipes::insert(
        &mut db,
        "faster",
        &TrainConfig {
            lr: 1e-3,
            ..unit.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        recipes::latest(&pool).await.unwrap().unwrap().id,
        faster.into_inner().id
    );
    let found = recipes::find(&pool, "unit").await.unwrap().unwrap();
    assert_eq!(
        found.config.0, unit,
        "settings round-trip through the registry"
    );
}

mod pool {
    use mixpool::engine::model::ModelConfig;
    use mixpool::engine::train::TrainConfig;
    use mixpool::registry::datasets::{self, Kind};
    use mixpool::registry::scores::{self, ScoreKey};
    use mixpool::registry::{RegistryError, bases, jobs, models, recipes};
    use serde_json::json;
    use uuid::Uuid;

    use crate::helpers::fresh_db;

    #[tokio::test]
    async fn bases_are_ready_with_weights_or_pending_until_pretrained() {
        let pool = fresh_db().await;
        let mut db = pool.acquire().await.unwrap();
        let tiny = ModelConfig::preset("tiny").unwrap();
        let ready = bases::insert(&mut db, Uuid::new_v4(), "imported", &tiny, Some("abc"))
            .await
            .unwrap();
        let pending = bases::insert(&mut db, Uuid::new_v4(), "pretraining", &tiny, None)
            .await
            .unwrap();
        assert_eq!(
            (ready.state.as_str(), pending.state.as_str()),
            ("ready", "pending")
        );
        assert_eq!(
            bases::latest_ready(&pool).await.unwrap().unwrap().id,
            ready.id,
            "pending bases are no default"
        );
        let err = bases::insert(&mut db, Uuid::new_v4(), "imported", &tiny, None)
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::NameTaken { .. }));
        bases::mark_ready(&mut db, pending.id, "def").await.unwrap();
        assert_eq!(
            bases::latest_ready(&pool).await.unwrap().unwrap().id,
            pending.id
        );
        assert_eq!(
            bases::find(&pool, "imported")
                .await
                .unwrap()
                .unwrap()
                .config
                .0,
            tiny
        );
    }

    async fn ids(pool: &sqlx::PgPool) -> (Uuid, Uuid, Uuid) {
        let mut db = pool.acquire().await.unwrap();
        let tiny = ModelConfig::preset("tiny").unwrap();
        let base = bases::insert(&mut db, Uuid::new_v4(), "b", &tiny, Some("w"))
            .await
            .unwrap()
            .id;
        let recipe = recipes::insert(&mut db, "r", &TrainConfig::default())
            .await
            .unwrap()
            .into_inner()
            .id;
        let new = datasets::NewDataset {
            name: "p".into(),
            domain: None,
            tags: vec![],
            sha256: "s".into(),
            object_sha256: "o".into(),
            bytes: 1,
            documents: 1,
            shape: None,
            train: true,
            sources: None,
        };
        let partition = datasets::insert(&mut db, Kind::Partition, &new)
            .await
            .unwrap()
            .into_inner()
            .id;
        (base, recipe, partition)
    }

    #[tokio::test]
    async fn a_unit_model_is_created_once_with_its_training_job() {
        let pool = fresh_db().await;
        let (base, recipe, partition) = ids(&pool).await;
        let mut tx = pool.begin().await.unwrap();
        let first = mixpool::jobs::train::ensure(&mut tx, base, recipe, partition)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert!(first.is_new());
        let model = first.into_inner();
        let job = jobs::get(&pool, model.job_id.unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (job.kind.as_str(), job.payload.clone()),
            ("train", json!({ "model": model.id }))
        );

        let mut db = pool.acquire().await.unwrap();
        let again = mixpool::jobs::train::ensure(&mut db, base, recipe, partition)
            .await
            .unwrap();
        assert!(!again.is_new());
        assert_eq!(
            (
                again.into_inner().job_id,
                jobs::list(&pool, None, None, None, 10).await.unwrap().len()
            ),
            (Some(job.id), 1)
        );

        models::mark_failed(&mut db, model.id).await.unwrap();
        let retried = mixpool::jobs::train::ensure(&mut db, base, recipe, partition)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(retried.state, "queued");
        assert_eq!(
            jobs::list(&pool, None, None, None, 10).await.unwrap().len(),
            1,
            "the first job is still active: shared"
        );
        models::mark_ready(&mut db, model.id, "weights", None)
            .await
            .unwrap();
        let listed = models::for_partitions(&pool, base, recipe, &[partition, Uuid::new_v4()])
            .await
            .unwrap();
        assert_eq!((listed.len(), listed[0].state.as_str()), (1, "ready"));
    }

    #[tokio::test]
    async fn a_score_is_stored_once_per_key() {
        let pool = fresh_db().await;
        let (base, recipe, partition) = ids(&pool).await;
        let mut db = pool.acquire().await.unwrap();
        let eval_set = datasets::insert(
            &mut db,
            Kind::EvalSet,
            &datasets::NewDataset {
                name: "e".into(),
                domain: None,
                tags: vec![],
                sha256: "e".into(),
                object_sha256: "o".into(),
                bytes: 1,
                documents: 1,
                shape: None,
                train: true,
                sources: None,
            },
        )
        .await
        .unwrap()
        .into_inner()
        .id;
        let key = ScoreKey {
            base_id: base,
            recipe_id: recipe,
            mixture_key: format!("{partition}:1"),
            weighting: "uniform".into(),
            merge_method: "average".into(),
            eval_set_id: eval_set,
            eval_config_sha256: "c".into(),
        };
        assert!(scores::get(&pool, &key).await.unwrap().is_none());
        let first = scores::insert(
            &mut db,
            &key,
            &json!([]),
            &json!({}),
            &json!({"perplexity": 3.5}),
        )
        .await
        .unwrap();
        let second = scores::insert(
            &mut db,
            &key,
            &json!([]),
            &json!({}),
            &json!({"perplexity": 9.9}),
        )
        .await
        .unwrap();
        assert_eq!(
            (second.id, second.result.clone()),
            (first.id, json!({"perplexity": 3.5}))
        );
        assert_eq!(
            scores::get(&pool, &key).await.unwrap().unwrap().id,
            first.id
        );
        let other = ScoreKey {
            weighting: "tokens".into(),
            ..key
        };
        assert!(scores::get(&pool, &other).await.unwrap().is_none());
    }
}
