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
