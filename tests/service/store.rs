use bytes::Bytes;
use mixpool::store::{S3Config, Store, StoreError, keys};
use sha2::{Digest, Sha256};

fn local() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        &format!("file://{}", dir.path().display()),
        &S3Config::default(),
    )
    .unwrap();
    (dir, store)
}

/// A fresh prefix in the test bucket of the S3 server that `make test` starts.
fn s3() -> Store {
    let endpoint = std::env::var("MIXPOOL_TEST_S3_ENDPOINT").expect(
        "MIXPOOL_TEST_S3_ENDPOINT names the S3 server for tests (`scripts/s3.sh` starts one)",
    );
    let config = S3Config {
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
        access_key_id: Some("mixpool".into()),
        secret_access_key: Some("mixpool-secret".into()),
    };
    Store::open(
        &format!("s3://mixpool-test/{}", uuid::Uuid::new_v4()),
        &config,
    )
    .unwrap()
}

/// 13 MiB in uneven chunks, so the upload takes several multipart parts.
fn data() -> Vec<Bytes> {
    (0..5u32)
        .map(|i| {
            Bytes::from(
                (0..(2_700_000 + i * 1000))
                    .map(|j| (j.wrapping_mul(31) ^ i) as u8)
                    .collect::<Vec<_>>(),
            )
        })
        .collect()
}

fn stream(chunks: Vec<Bytes>) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::iter(chunks.into_iter().map(Ok))
}

async fn round_trip(store: &Store) {
    let chunks = data();
    let all: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
    let sha = hex::encode(Sha256::digest(&all));

    let stored = store
        .put_stream(stream(chunks.clone()), keys::partition)
        .await
        .unwrap();
    assert_eq!(
        (stored.sha256.as_str(), stored.bytes),
        (sha.as_str(), all.len() as u64)
    );
    assert_eq!(stored.key, format!("partitions/{sha}/data.jsonl.zst"));
    let again = store
        .put_stream(stream(chunks), keys::partition)
        .await
        .unwrap();
    assert_eq!(again, stored, "the same bytes land at the same key");
    assert!(
        store.list("staging").await.unwrap().is_empty(),
        "no staging object is left behind"
    );

    assert_eq!(store.get_verified(&stored.key, &sha).await.unwrap(), all);
    let wrong = "0".repeat(64);
    match store.get_verified(&stored.key, &wrong).await {
        Err(StoreError::Checksum { key, actual, .. }) => {
            assert_eq!((key, actual), (stored.key.clone(), sha.clone()))
        }
        other => panic!("{other:?}"),
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    store
        .download_verified(&stored.key, &sha, &file)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), all);
    let other = dir.path().join("other");
    assert!(
        store
            .download_verified(&stored.key, &wrong, &other)
            .await
            .is_err()
    );
    assert!(!other.exists() && !dir.path().join("other.partial").exists());

    let uploaded = store
        .put_file(&file, "models/m/model.safetensors")
        .await
        .unwrap();
    assert_eq!(
        (uploaded.sha256, uploaded.key.as_str()),
        (sha.clone(), "models/m/model.safetensors")
    );

    store.ready().await.unwrap();
    store.delete(&stored.key).await.unwrap();
    store.delete(&stored.key).await.unwrap();
    assert!(store.get_verified(&stored.key, &sha).await.is_err());
}

#[tokio::test]
async fn the_local_folder_store_streams_verifies_and_deduplicates() {
    let (_dir, store) = local();
    round_trip(&store).await;
}

#[tokio::test]
async fn the_s3_store_streams_verifies_and_deduplicates() {
    round_trip(&s3()).await;
}

#[tokio::test]
async fn a_corrupted_object_fails_verification() {
    let (dir, store) = local();
    let stored = store
        .put_stream(
            stream(vec![Bytes::from_static(b"{\"text\": \"x\"}\n")]),
            keys::eval_set,
        )
        .await
        .unwrap();
    std::fs::write(dir.path().join(&stored.key), b"{\"text\": \"y\"}\n").unwrap();
    let err = store
        .get_verified(&stored.key, &stored.sha256)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&stored.key), "{err}");
}

#[tokio::test]
async fn a_failed_upload_leaves_no_object() {
    for store in [local().1, s3()] {
        let chunks = vec![
            Ok(Bytes::from(vec![7u8; 1 << 20])),
            Err(std::io::Error::other("client went away")),
        ];
        let err = store
            .put_stream(futures::stream::iter(chunks), keys::partition)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("client went away"));
        assert!(store.list("partitions").await.unwrap().is_empty());
        assert!(store.list("staging").await.unwrap().is_empty());
    }
}

#[test]
fn unusable_store_urls_are_refused_with_the_fix() {
    for (url, hint) in [
        ("ftp://host/x", "file:///path or s3://bucket/prefix"),
        ("file://relative/dir", "absolute path"),
        ("s3://", "no bucket"),
    ] {
        let err = Store::open(url, &S3Config::default()).err().unwrap();
        assert!(err.to_string().contains(hint), "{url}: {err}");
    }
    let no_scheme = S3Config {
        endpoint: Some("127.0.0.1:9000".into()),
        ..S3Config::default()
    };
    let err = Store::open("s3://bucket", &no_scheme).err().unwrap();
    assert!(err.to_string().contains("http:// or https://"), "{err}");
}

#[test]
fn s3_secrets_are_not_printed() {
    let config = S3Config {
        secret_access_key: Some("hunter2".into()),
        ..S3Config::default()
    };
    assert!(!format!("{config:?}").contains("hunter2"));
}

/// The environment `docker-compose.yml` gives the service's containers (its `x-pool` block).
fn compose_environment() -> Vec<(String, String)> {
    let compose =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml"))
            .unwrap();
    compose
        .lines()
        .skip_while(|l| !l.starts_with("x-pool:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            let (name, value) = l.trim().split_once(": ").unwrap();
            (name.to_string(), value.trim_matches('"').to_string())
        })
        .collect()
}

#[tokio::test]
async fn serve_uses_the_s3_store_through_the_compose_files_environment() {
    let endpoint = std::env::var("MIXPOOL_TEST_S3_ENDPOINT").unwrap();
    let pool = crate::helpers::fresh_db().await;
    let database = crate::helpers::database_url(&pool).await;
    let compose = compose_environment();
    let get = |name: &str| {
        compose
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        (get("AWS_ENDPOINT_URL"), get("AWS_ALLOW_HTTP")),
        (Some("http://s3:8333"), Some("true")),
        "the compose file's store settings: {compose:?}"
    );
    // The compose file's variables as they are, but for the hosts' names; then the same
    // with the older AWS_ENDPOINT.
    for endpoint_variable in ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"] {
        let prefix = uuid::Uuid::new_v4().to_string();
        let env: Vec<(String, String)> = compose
            .iter()
            .map(|(name, value)| match name.as_str() {
                "AWS_ENDPOINT_URL" => (endpoint_variable.to_string(), endpoint.clone()),
                "MIXPOOL_STORE" => (name.clone(), format!("s3://mixpool-test/{prefix}")),
                "DATABASE_URL" => (name.clone(), database.clone()),
                _ => (name.clone(), value.clone()),
            })
            .collect();
        let data = tempfile::tempdir().unwrap();
        let server = crate::helpers::Server::start(data.path(), &env).await;
        let token = crate::helpers::token(&pool, mixpool::registry::tokens::Scope::Write).await;
        let client = crate::helpers::client(&token);
        let ready = client
            .get(format!("{}/readyz", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200, "{endpoint_variable}: {}", server.log());
        let uploaded = client
            .post(format!("{}/v1/partitions?name=p{prefix}", server.url))
            .body(format!(
                "{{\"text\": \"stored through {endpoint_variable}\"}}\n"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(uploaded.status(), 201, "{}", server.log());
        let config = S3Config {
            endpoint: Some(endpoint.clone()),
            region: Some("us-east-1".into()),
            access_key_id: Some("mixpool".into()),
            secret_access_key: Some("mixpool-secret".into()),
        };
        let store = Store::open(&format!("s3://mixpool-test/{prefix}"), &config).unwrap();
        let stored = store.list("partitions").await.unwrap();
        assert_eq!(stored.len(), 1, "{stored:?}");
    }
}

#[tokio::test]
async fn a_store_that_cannot_be_used_at_start_up_is_named_with_its_cause() {
    // Nothing listens on port 1: serve waits, saying why in one line, and does not listen.
    let pool = crate::helpers::fresh_db().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_mixpool"))
        .args(["serve", "--no-worker", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(tempfile::tempdir().unwrap().path())
        .env("DATABASE_URL", crate::helpers::database_url(&pool).await)
        .env("MIXPOOL_STORE", "s3://mixpool-test/unreachable")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
        .env("AWS_ACCESS_KEY_ID", "mixpool")
        .env("AWS_SECRET_ACCESS_KEY", "mixpool-secret")
        .env("AWS_REGION", "us-east-1")
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let said = loop {
        let said = std::fs::read_to_string(log.path()).unwrap();
        if said.contains("retrying") || started.elapsed() > std::time::Duration::from_secs(30) {
            break said;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // Asked while serve is still waiting for its store: a killed server listens on nothing.
    let listening = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    let alive = serve.try_wait().unwrap().is_none();
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(alive, "serve keeps waiting for its store: {said}");
    assert!(
        !listening,
        "serve does not listen before its store can be used"
    );
    let line = said
        .lines()
        .find(|l| l.contains("the object store cannot be used"))
        .unwrap_or_else(|| panic!("no line names the store: {said}"));
    assert!(
        line.contains("Connection refused") || line.contains("connect"),
        "the underlying cause: {line}"
    );
    assert!(!line.contains("mixpool-secret"), "{line}");
}
