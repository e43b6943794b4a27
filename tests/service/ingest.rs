use std::io::{Read, Write};

use bytes::Bytes;
use mixpool::engine::data::Format;
use mixpool::ingest::{IngestError, Upload, ingest};
use mixpool::registry::datasets::{self, Kind};
use mixpool::store::{S3Config, Store};
use sqlx::PgPool;

use crate::helpers::fresh_db;

struct Pool {
    db: PgPool,
    store: Store,
    _dir: tempfile::TempDir,
}

async fn pool() -> Pool {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        &format!("file://{}", dir.path().display()),
        &S3Config::default(),
    )
    .unwrap();
    Pool {
        db: fresh_db().await,
        store,
        _dir: dir,
    }
}

fn upload(kind: Kind, name: &str) -> Upload {
    Upload {
        kind,
        name: name.into(),
        domain: Some("code".into()),
        tags: vec![],
        format: None,
        max_bytes: 1 << 20,
        train: true,
        choices: None,
        text_field: None,
        parquet: false,
    }
}

/// The body in chunks of 7 bytes, so lines and compressed frames straddle chunk boundaries.
fn body(
    bytes: &[u8],
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let chunks: Vec<_> = bytes
        .chunks(7)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks)
}

const JSONL: &str = "{\"text\": \"def f():\\n    return 1\\n\", \"id\": 1}\n\n{\"text\": \"x = 2\", \"domain\": \"py\"}\n{\"text\": \"   \"}\n";

async fn stored_text(p: &Pool, kind: Kind, name: &str) -> String {
    let row = datasets::find(&p.db, kind, name).await.unwrap().unwrap();
    let key = match kind {
        Kind::Partition => mixpool::store::keys::partition(&row.sha256),
        Kind::EvalSet => mixpool::store::keys::eval_set(&row.sha256),
    };
    let compressed = p
        .store
        .get_verified(&key, &row.object_sha256)
        .await
        .unwrap();
    let mut text = String::new();
    zstd::stream::read::Decoder::new(compressed.as_ref())
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text
}

async fn nothing_stored(p: &Pool) {
    assert!(p.store.list("partitions").await.unwrap().is_empty());
    assert!(p.store.list("evalsets").await.unwrap().is_empty());
    assert!(p.store.list("staging").await.unwrap().is_empty());
    assert!(
        datasets::list(&p.db, Kind::Partition, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn an_upload_is_normalised_stored_under_its_hash_and_registered() {
    let p = pool().await;
    let created = ingest(
        &p.db,
        &p.store,
        &upload(Kind::Partition, "snippets"),
        body(JSONL.as_bytes()),
    )
    .await
    .unwrap();
    assert!(created.is_new());
    let row = created.into_inner();
    assert_eq!((row.documents, row.domain.as_deref()), (2, Some("code")));
    assert_eq!(
        row.bytes as usize,
        "def f():\n    return 1\n".len() + "x = 2".len()
    );
    let text = stored_text(&p, Kind::Partition, "snippets").await;
    assert_eq!(
        text,
        "{\"text\":\"def f():\\n    return 1\\n\"}\n{\"domain\":\"py\",\"text\":\"x = 2\"}\n"
    );
}

#[tokio::test]
async fn the_same_content_compressed_or_renamed_is_the_same_dataset() {
    let p = pool().await;
    let first = ingest(
        &p.db,
        &p.store,
        &upload(Kind::Partition, "a"),
        body(JSONL.as_bytes()),
    )
    .await
    .unwrap()
    .into_inner();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(JSONL.as_bytes()).unwrap();
    let again = ingest(
        &p.db,
        &p.store,
        &upload(Kind::Partition, "b"),
        body(&gz.finish().unwrap()),
    )
    .await
    .unwrap();
    assert!(!again.is_new());
    assert_eq!(again.into_inner().id, first.id);
    let zst = zstd::encode_all(JSONL.as_bytes(), 19).unwrap();
    let third = ingest(&p.db, &p.store, &upload(Kind::Partition, "a"), body(&zst))
        .await
        .unwrap();
    assert_eq!(third.into_inner().id, first.id);
    assert_eq!(p.store.list("partitions").await.unwrap().len(), 1);
}

#[tokio::test]
async fn plain_text_is_one_document_and_eval_sets_keep_their_domains() {
    let p = pool().await;
    let text = "Four score and seven years ago\n\nour fathers brought forth\n";
    let mut up = upload(Kind::Partition, "speech");
    up.format = Some(Format::Text);
    let row = ingest(&p.db, &p.store, &up, body(text.as_bytes()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((row.documents, row.bytes as usize), (1, text.len()));

    let eval = "{\"text\": \"a\", \"domain\": \"x\"}\n{\"text\": \"b\", \"domain\": \"y\"}\n";
    ingest(
        &p.db,
        &p.store,
        &upload(Kind::EvalSet, "held-out"),
        body(eval.as_bytes()),
    )
    .await
    .unwrap();
    assert!(
        stored_text(&p, Kind::EvalSet, "held-out")
            .await
            .contains("\"domain\":\"y\"")
    );
}

#[tokio::test]
async fn bad_uploads_name_the_problem_and_store_nothing() {
    let p = pool().await;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"{\"text\": \"ok\"}\n{\"text\": \"\xff\"}\n".to_vec(),
            "line 2: not valid UTF-8",
        ),
        (
            b"{\"text\": \"ok\"}\n{\"text\": \"ok\"}\n{\"text\": nope}\n".to_vec(),
            "line 3: not a JSON object",
        ),
        (
            b"{\"body\": \"no text\"}\n".to_vec(),
            "line 1: no \"text\" string",
        ),
        (b"{\"text\": \"\"}\n\n".to_vec(), "no documents"),
        (b"".to_vec(), "no documents"),
        (
            vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3],
            "reading the upload",
        ),
    ];
    for (bytes, expected) in cases {
        let err = ingest(
            &p.db,
            &p.store,
            &upload(Kind::Partition, "bad"),
            body(&bytes),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains(expected), "{expected}: {err}");
        nothing_stored(&p).await;
    }
}

#[tokio::test]
async fn oversized_uploads_and_decompression_bombs_are_refused() {
    let p = pool().await;
    let mut up = upload(Kind::Partition, "big");
    up.max_bytes = 1000;
    let big = "{\"text\": \"aaaaaaaaaa\"}\n".repeat(100);
    let err = ingest(&p.db, &p.store, &up, body(big.as_bytes()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, IngestError::TooLarge { limit: 1000 }),
        "{err}"
    );
    let bomb = zstd::encode_all(big.as_bytes(), 19).unwrap();
    assert!(bomb.len() < 1000);
    let err = ingest(&p.db, &p.store, &up, body(&bomb)).await.unwrap_err();
    assert!(matches!(err, IngestError::TooLarge { .. }), "{err}");
    nothing_stored(&p).await;
}

#[tokio::test]
async fn a_name_taken_by_other_content_is_refused_and_its_object_removed() {
    let p = pool().await;
    ingest(
        &p.db,
        &p.store,
        &upload(Kind::Partition, "taken"),
        body(JSONL.as_bytes()),
    )
    .await
    .unwrap();
    let other = "{\"text\": \"something else\"}\n";
    let err = ingest(
        &p.db,
        &p.store,
        &upload(Kind::Partition, "taken"),
        body(other.as_bytes()),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("\"taken\" is taken"), "{err}");
    assert_eq!(p.store.list("partitions").await.unwrap().len(), 1);
    for bad in ["", "../etc", "a/b", ".hidden", "spaces here"] {
        let err = ingest(
            &p.db,
            &p.store,
            &upload(Kind::Partition, bad),
            body(other.as_bytes()),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, IngestError::BadName(_)), "{bad:?}: {err}");
    }
}
