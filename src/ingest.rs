//! Uploads into the pool: a body (JSONL or plain text, optionally gzip or zstd) is checked
//! line by line, normalised to JSONL (`text`, and `domain` where given; for an eval set of
//! multiple-choice questions, `context`, `choices`, `gold` and `task`), compressed with zstd
//! and streamed into the store under its content hash, then registered. Nothing is held whole
//! in memory except a plain-text document, and a bad upload leaves neither object nor row.
//!
//! The parsing runs on a blocking thread between two channels: body chunks in, compressed
//! chunks out to the store's streaming upload.

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::engine::choices::{self, ChoicesError, Shape, looks_like_choices};
use crate::engine::data::{self, DataError, Document, Format};
use crate::registry::datasets::{self, Dataset, Kind, NewDataset};
use crate::registry::{Created, RegistryError};
use crate::sources;
use crate::store::{Store, StoreError, keys};

#[derive(Debug, Clone)]
pub struct Upload {
    pub kind: Kind,
    pub name: String,
    pub domain: Option<String>,
    pub tags: Vec<String>,
    /// Taken from the content when not given: JSONL when it starts with `{`.
    pub format: Option<Format>,
    /// Largest accepted body, compressed or not, and largest decompressed size.
    pub max_bytes: u64,
    /// Partitions only: whether its unit models are wanted.
    pub train: bool,
    /// Eval sets only: whether it holds multiple-choice questions (`Some(true)`) or text
    /// (`Some(false)`); taken from the first record's fields when not given.
    pub choices: Option<bool>,
    /// Parquet: the column holding the text (`text` when not given). A body is read as
    /// Parquet when it starts with Parquet's magic bytes or `parquet` is set.
    pub text_field: Option<String>,
    pub parquet: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    Data(#[from] DataError),
    #[error("{0}")]
    Choices(#[from] ChoicesError),
    #[error("the upload is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error(
        "invalid name {0:?}: use 1-128 letters, digits, '.', '-' or '_', not starting with '.'"
    )]
    BadName(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading the upload: {0}")]
    Body(std::io::Error),
    #[error("{0}")]
    Parquet(String),
    #[error(transparent)]
    Source(crate::sources::SourceError),
    #[error("eval set {name:?} has {documents} document(s): splitting it needs at least 2")]
    TooFewToSplit { name: String, documents: usize },
}

/// Names become keys and path segments: keep them plain.
pub fn check_name(name: &str) -> Result<(), IngestError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(IngestError::BadName(name.to_string()))
    }
}

/// How a Parquet body is read.
struct Parquet {
    /// Read as Parquet whatever its first bytes (`format=parquet`).
    forced: bool,
    text_field: String,
}

struct Parsed {
    sha256: String,
    documents: i64,
    bytes: i64,
    /// A choices set's record shape.
    shape: Option<Shape>,
}

/// Stores and registers `body`; identical content already in the pool is returned as
/// `Created::Existing`.
pub async fn ingest<S>(
    pool: &PgPool,
    store: &Store,
    upload: &Upload,
    body: S,
) -> Result<Created<Dataset>, IngestError>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    check_name(&upload.name)?;
    let (in_tx, in_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let (out_tx, mut out_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let forward = tokio::spawn(async move {
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            if in_tx.send(chunk).await.is_err() {
                break;
            }
        }
    });
    let content_sha = Arc::new(OnceLock::new());
    let (format, limit, sha) = (upload.format, upload.max_bytes, content_sha.clone());
    let choices = match upload.kind {
        Kind::EvalSet => upload.choices,
        Kind::Partition => Some(false),
    };
    let parquet = Parquet {
        forced: upload.parquet,
        text_field: upload.text_field.clone().unwrap_or_else(|| "text".into()),
    };
    let parser = tokio::task::spawn_blocking(move || {
        let result = parse(in_rx, &out_tx, format, choices, &parquet, limit);
        match &result {
            Ok(parsed) => {
                let _ = sha.set(parsed.sha256.clone());
            }
            // Makes the upload abort instead of storing a partial object.
            Err(e) => {
                let _ = out_tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
        result
    });
    let compressed = futures::stream::poll_fn(move |cx| out_rx.poll_recv(cx));
    let kind = upload.kind;
    let stored = store
        .put_stream(compressed, |_| match kind {
            Kind::Partition => {
                keys::partition(content_sha.get().expect("set before the stream ends"))
            }
            Kind::EvalSet => keys::eval_set(content_sha.get().expect("set before the stream ends")),
        })
        .await;
    forward.abort();
    let (parsed, stored) = match (parser.await.expect("the parser does not panic"), stored) {
        (Ok(parsed), Ok(stored)) => (parsed, stored),
        // The parser stopped because the upload did: the store's error says why.
        (Err(IngestError::Body(_)), Err(e)) | (Ok(_), Err(e)) => return Err(e.into()),
        (Err(e), _) => return Err(e),
    };

    let new = NewDataset {
        name: upload.name.clone(),
        domain: upload.domain.clone(),
        tags: upload.tags.clone(),
        sha256: parsed.sha256,
        object_sha256: stored.sha256.clone(),
        bytes: parsed.bytes,
        documents: parsed.documents,
        shape: parsed.shape.map(|s| s.as_str().to_string()),
        train: upload.train,
        sources: None,
    };
    let mut db = pool.acquire().await.map_err(RegistryError::from)?;
    match datasets::insert(&mut db, kind, &new).await {
        // The same documents, read in place from the store: the row keeps reading them there.
        Ok(Created::Existing(row)) if row.sources.is_some() => {
            store.delete(&stored.key).await?;
            Ok(Created::Existing(row))
        }
        Ok(Created::Existing(row)) if row.object_sha256 != stored.sha256 => {
            // The same content, compressed differently (another zstd version): the object at
            // the key is now the new one, so the row must name its hash.
            let row = datasets::set_object_sha256(&mut db, kind, row.id, &stored.sha256)
                .await
                .map_err(RegistryError::from)?;
            Ok(Created::Existing(row))
        }
        Err(e @ RegistryError::NameTaken { .. }) => {
            // No row has this content, so nothing else needs the object.
            store.delete(&stored.key).await?;
            Err(e.into())
        }
        other => Ok(other?),
    }
}

/// The halves of an eval set that a `gradient` search tunes on and reports on: `<name>.tune`
/// holds its documents at odd positions (the second, the fourth, …) and `<name>.report` the
/// others, each stored and registered as an eval set of its own (asking again finds them: the
/// content decides). Fails when the set has fewer than 2 documents.
pub async fn split_eval_set(
    pool: &PgPool,
    store: &Store,
    set: &Dataset,
) -> Result<(Dataset, Dataset), IngestError> {
    let object = crate::sources::text(store, set, &keys::eval_set(&set.sha256))
        .await
        .map_err(|e| match e {
            crate::sources::SourceError::Store(e) => IngestError::Store(e),
            e => IngestError::Source(e),
        })?;
    let text = data::decompress(object.to_vec())?;
    let docs = data::parse_documents(&text, Some(Format::Jsonl))?;
    if docs.len() < 2 {
        return Err(IngestError::TooFewToSplit {
            name: set.name.clone(),
            documents: docs.len(),
        });
    }
    let (tune, report): (Vec<_>, Vec<_>) =
        docs.into_iter().enumerate().partition(|(i, _)| i % 2 == 1);
    let mut halves = Vec::with_capacity(2);
    for (suffix, docs) in [("tune", tune), ("report", report)] {
        let docs: Vec<Document> = docs.into_iter().map(|(_, d)| d).collect();
        let upload = Upload {
            kind: Kind::EvalSet,
            name: format!("{}.{suffix}", set.name),
            domain: set.domain.clone(),
            tags: set.tags.clone(),
            format: Some(Format::Jsonl),
            max_bytes: u64::MAX,
            train: false,
            choices: None,
            text_field: None,
            parquet: false,
        };
        let body = Bytes::from(data::jsonl(&docs));
        let created = ingest(
            pool,
            store,
            &upload,
            futures::stream::once(async { Ok(body) }),
        )
        .await?;
        halves.push(created.into_inner());
    }
    let report = halves.pop().expect("two halves");
    let tune = halves.pop().expect("two halves");
    Ok((tune, report))
}

/// Reads the body from `input`, writes zstd-compressed normalised JSONL to `output`.
/// `choices`: whether the body is multiple-choice questions (`None`: as its first record
/// says).
fn parse(
    input: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    output: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    format: Option<Format>,
    choices: Option<bool>,
    parquet: &Parquet,
    limit: u64,
) -> Result<Parsed, IngestError> {
    let raw = Limited {
        inner: ChannelReader {
            rx: input,
            chunk: Bytes::new(),
        },
        left: limit,
        limit,
    };
    let mut raw = BufReader::with_capacity(1 << 16, raw);
    let head = raw.fill_buf().map_err(body_error)?.to_vec();
    // Parquet's index is at its end: the file is read whole (within the limit).
    let mut parquet_docs = None;
    if parquet.forced || head.starts_with(sources::PARQUET_MAGIC) {
        if choices == Some(true) {
            return Err(IngestError::Parquet(
                "multiple-choice questions are read from JSONL, not Parquet".into(),
            ));
        }
        let mut all = Vec::new();
        raw.read_to_end(&mut all).map_err(body_error)?;
        let docs = sources::parquet_documents(Bytes::from(all), &parquet.text_field)
            .map_err(IngestError::Parquet)?;
        parquet_docs = Some(docs);
    }
    let choices = if parquet_docs.is_some() {
        Some(false)
    } else {
        choices
    };
    let decoded: Box<dyn Read> = if parquet_docs.is_some() {
        Box::new(std::io::empty())
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(raw))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(raw).map_err(body_error)?)
    } else {
        Box::new(raw)
    };
    let mut text = BufReader::with_capacity(
        1 << 16,
        Limited {
            inner: decoded,
            left: limit,
            limit,
        },
    );
    let first = text.fill_buf().map_err(body_error)?;
    let choices = choices.unwrap_or_else(|| format.is_none() && looks_like_choices(first));
    let format = format.unwrap_or_else(|| match first.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Format::Jsonl,
        _ => Format::Text,
    });

    let writer = ChannelWriter { tx: output.clone() };
    let mut encoder = zstd::stream::write::Encoder::new(writer, 3).map_err(body_error)?;
    let mut hasher = Sha256::new();
    let (mut documents, mut bytes) = (0i64, 0i64);
    let mut emit = |doc: Document,
                    encoder: &mut zstd::stream::write::Encoder<ChannelWriter>|
     -> Result<(), IngestError> {
        if doc.text.trim().is_empty() {
            return Ok(());
        }
        let line = normalised(&doc);
        hasher.update(&line);
        encoder.write_all(&line).map_err(body_error)?;
        documents += 1;
        bytes += doc.text.len() as i64;
        Ok(())
    };
    let mut shape = None;
    match format {
        _ if parquet_docs.is_some() => {
            for doc in parquet_docs.take().into_iter().flatten() {
                emit(doc, &mut encoder)?;
            }
        }
        _ if choices => {
            let mut line = Vec::new();
            let mut line_no = 0;
            loop {
                line.clear();
                if text.read_until(b'\n', &mut line).map_err(body_error)? == 0 {
                    break;
                }
                line_no += 1;
                let s = std::str::from_utf8(&line).map_err(|_| ChoicesError::Record {
                    line: line_no,
                    message: "not UTF-8".into(),
                })?;
                if let Some(question) = choices::parse_line(s, line_no, &mut shape)? {
                    let mut line = serde_json::to_vec(&question).expect("questions serialise");
                    line.push(b'\n');
                    hasher.update(&line);
                    encoder.write_all(&line).map_err(body_error)?;
                    documents += 1;
                    bytes += (question.context.len()
                        + question.choices.iter().map(String::len).sum::<usize>())
                        as i64;
                }
            }
        }
        Format::Jsonl => {
            let mut line = Vec::new();
            let mut line_no = 0;
            loop {
                line.clear();
                if text.read_until(b'\n', &mut line).map_err(body_error)? == 0 {
                    break;
                }
                line_no += 1;
                let s =
                    std::str::from_utf8(&line).map_err(|_| DataError::NotUtf8 { line: line_no })?;
                if let Some(doc) = data::parse_jsonl_line(s, line_no)? {
                    emit(doc, &mut encoder)?;
                }
            }
        }
        Format::Text => {
            let mut all = Vec::new();
            text.read_to_end(&mut all).map_err(body_error)?;
            for doc in data::parse_documents(&all, Some(Format::Text))? {
                emit(doc, &mut encoder)?;
            }
        }
    }
    if documents == 0 {
        return Err(DataError::Empty.into());
    }
    let sha256 = hex::encode(hasher.finalize());
    encoder.finish().map_err(body_error)?;
    Ok(Parsed {
        sha256,
        documents,
        bytes,
        shape,
    })
}

/// A document as the pool stores it: one JSON line, `text` and `domain` where there is one.
/// A dataset's identity is the sha256 of its documents' lines.
pub fn normalised(doc: &Document) -> Vec<u8> {
    let mut line = match &doc.domain {
        Some(domain) => {
            serde_json::to_vec(&serde_json::json!({"text": doc.text, "domain": domain}))
        }
        None => serde_json::to_vec(&serde_json::json!({"text": doc.text})),
    }
    .expect("documents serialise");
    line.push(b'\n');
    line
}

fn body_error(e: std::io::Error) -> IngestError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TooLarge>())
    {
        Some(TooLarge(limit)) => IngestError::TooLarge { limit: *limit },
        None => IngestError::Body(e),
    }
}

#[derive(Debug)]
struct TooLarge(u64);

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "larger than {} bytes", self.0)
    }
}

impl std::error::Error for TooLarge {}

/// Fails reads past `limit` bytes (for bodies, and for what they decompress to).
struct Limited<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(std::io::Error::other(TooLarge(self.limit)));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The body's chunks as a blocking reader.
struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    chunk: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// Compressed output as chunks for the store's upload.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::other("the store upload stopped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
