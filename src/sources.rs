//! Corpora where they already are: a partition or eval set whose text is objects of the
//! pool's store (JSONL or text shards, gzip or zstd, or Parquet files), read in place. The
//! registry records each object's key, size and sha256 when it is first read; whoever reads
//! them again (training, evaluation, `fsck`) checks them, so an object changed since is an
//! error that names it, never silently different data. The documents are those of an upload
//! of the same text, in the objects' order: the dataset's identity (`sha256`) and every model
//! trained on it are the same.

use serde::{Deserialize, Serialize};

use crate::engine::data::{self, DataError, Document, Format};
use crate::store::{Store, StoreError};

/// How a dataset's objects are read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Sources {
    /// `jsonl`, `text` or `parquet`.
    pub format: SourceFormat,
    /// Parquet: the column holding the text.
    pub text_field: String,
    /// In the order their documents are read.
    pub objects: Vec<SourceObject>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceObject {
    /// A key of the pool's store.
    pub key: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    Jsonl,
    Text,
    Parquet,
}

impl SourceFormat {
    pub fn parse(name: &str) -> Result<SourceFormat, String> {
        match name {
            "jsonl" => Ok(SourceFormat::Jsonl),
            "text" => Ok(SourceFormat::Text),
            "parquet" => Ok(SourceFormat::Parquet),
            other => Err(format!("format {other:?}: use jsonl, text or parquet")),
        }
    }
}

/// The magic bytes a Parquet file starts (and ends) with.
pub const PARQUET_MAGIC: &[u8] = b"PAR1";

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{key}: {source}")]
    Data { key: String, source: DataError },
    #[error("{key}: {message}")]
    Parquet { key: String, message: String },
    #[error(
        "{key} changed since it was registered: it now has {actual}, the registry recorded \
         {expected}"
    )]
    Changed {
        key: String,
        expected: String,
        actual: String,
    },
    #[error("{key} is gone from the store")]
    Missing { key: String },
    #[error("no documents in {objects} object(s)")]
    Empty { objects: usize },
    #[error(transparent)]
    Store(StoreError),
}

impl SourceError {
    /// Whether it is the data's fault (reading again will not help).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, SourceError::Store(_))
    }
}

/// The documents of one object's bytes: Parquet's `text_field` column, else JSONL or text
/// (gzip and zstd undone). An object without documents gives none.
pub fn documents(
    key: &str,
    bytes: Vec<u8>,
    format: SourceFormat,
    text_field: &str,
) -> Result<Vec<Document>, SourceError> {
    if format == SourceFormat::Parquet || bytes.starts_with(PARQUET_MAGIC) {
        return parquet_documents(bytes::Bytes::from(bytes), text_field).map_err(|message| {
            SourceError::Parquet {
                key: key.to_string(),
                message,
            }
        });
    }
    let in_object = |source| SourceError::Data {
        key: key.to_string(),
        source,
    };
    let text = data::decompress(bytes).map_err(in_object)?;
    let format = match format {
        SourceFormat::Jsonl => Format::Jsonl,
        _ => Format::Text,
    };
    match data::parse_documents(&text, Some(format)) {
        Ok(docs) => Ok(docs),
        Err(DataError::Empty) => Ok(Vec::new()),
        Err(e) => Err(in_object(e)),
    }
}

/// The non-empty strings of a Parquet file's column `text_field`, row by row; an error that
/// names what is wrong (not Parquet, no such column with the columns there are, not text).
pub fn parquet_documents(file: bytes::Bytes, text_field: &str) -> Result<Vec<Document>, String> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;

    if !file.starts_with(PARQUET_MAGIC) {
        return Err("not a Parquet file (it does not start with PAR1)".into());
    }
    let reader =
        SerializedFileReader::new(file).map_err(|e| format!("not readable Parquet: {e}"))?;
    let projection = text_column(reader.metadata().file_metadata().schema(), text_field)?;
    let rows = reader
        .get_row_iter(Some(projection))
        .map_err(|e| e.to_string())?;
    let mut docs = Vec::new();
    for row in rows {
        let row = row.map_err(|e| format!("reading a row: {e}"))?;
        // A null is no document.
        if let Ok(text) = row.get_string(0)
            && !text.trim().is_empty()
        {
            docs.push(Document {
                text: text.clone(),
                domain: None,
            });
        }
    }
    Ok(docs)
}

/// The schema that reads only the text column `text_field` of a Parquet file of `schema`;
/// an error naming the columns there are when it has none of that name, or when it does not
/// hold text.
fn text_column(
    schema: &parquet::schema::types::Type,
    text_field: &str,
) -> Result<parquet::schema::types::Type, String> {
    use parquet::basic::{ConvertedType, LogicalType, Type as Physical};
    use parquet::schema::types::Type;

    let fields = schema.get_fields();
    let Some(field) = fields.iter().find(|f| f.name() == text_field) else {
        let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
        return Err(format!(
            "no column {text_field:?} (its columns: {}); name the text's column with text_field",
            names.join(", ")
        ));
    };
    let is_text = field.is_primitive()
        && field.get_physical_type() == Physical::BYTE_ARRAY
        && (matches!(
            field.get_basic_info().logical_type_ref(),
            Some(LogicalType::String)
        ) || field.get_basic_info().converted_type() == ConvertedType::UTF8);
    if !is_text {
        return Err(format!("column {text_field:?} does not hold text"));
    }
    Type::group_type_builder(schema.name())
        .with_fields(vec![field.clone()])
        .build()
        .map_err(|e| e.to_string())
}

/// Checks that the object `key` of `size` bytes is Parquet with a text column `text_field`,
/// reading only its footer (two ranged reads).
pub async fn check_parquet(
    store: &Store,
    key: &str,
    size: u64,
    text_field: &str,
) -> Result<Result<(), String>, StoreError> {
    let not_parquet = || Ok(Err("not a Parquet file (it does not end with PAR1)".into()));
    if size < 12 {
        return not_parquet();
    }
    let tail = store.get_range(key, size - 8..size).await?;
    if &tail[4..] != PARQUET_MAGIC {
        return not_parquet();
    }
    let length = u32::from_le_bytes(tail[..4].try_into().expect("four bytes")) as u64;
    if length + 12 > size {
        return Ok(Err(format!(
            "its footer claims {length} bytes, more than the file"
        )));
    }
    let footer = store.get_range(key, size - 8 - length..size - 8).await?;
    let metadata = match parquet::file::metadata::ParquetMetaDataReader::decode_metadata(&footer) {
        Ok(metadata) => metadata,
        Err(e) => return Ok(Err(format!("not readable Parquet: {e}"))),
    };
    Ok(text_column(metadata.file_metadata().schema(), text_field).map(|_| ()))
}

/// Every document of `sources`, each object read whole, checked against its recorded size
/// and sha256.
pub async fn read(store: &Store, sources: &Sources) -> Result<Vec<Document>, SourceError> {
    let mut docs = Vec::new();
    for object in &sources.objects {
        let bytes = match store.get_verified(&object.key, &object.sha256).await {
            Ok(bytes) => bytes,
            Err(StoreError::Checksum {
                key,
                expected,
                actual,
            }) => {
                return Err(SourceError::Changed {
                    key,
                    expected: format!("sha256 {expected}"),
                    actual: format!("sha256 {actual}"),
                });
            }
            Err(StoreError::Backend(object_store::Error::NotFound { .. })) => {
                return Err(SourceError::Missing {
                    key: object.key.clone(),
                });
            }
            Err(e) => return Err(SourceError::Store(e)),
        };
        docs.extend(documents(
            &object.key,
            bytes.to_vec(),
            sources.format,
            &sources.text_field,
        )?);
    }
    if docs.is_empty() {
        return Err(SourceError::Empty {
            objects: sources.objects.len(),
        });
    }
    Ok(docs)
}

/// A dataset's documents as normalised JSONL: its own object (zstd, at `stored`) checked
/// against its recorded sha256, or the documents of its sources, each checked.
pub async fn text(
    store: &Store,
    dataset: &crate::registry::datasets::Dataset,
    stored: &str,
) -> Result<bytes::Bytes, SourceError> {
    match &dataset.sources {
        None => store
            .get_verified(stored, &dataset.object_sha256)
            .await
            .map_err(SourceError::Store),
        Some(sources) => {
            let docs = read(store, sources).await?;
            let lines: Vec<u8> = docs.iter().flat_map(crate::ingest::normalised).collect();
            Ok(bytes::Bytes::from(lines))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_parquet_or_lacks_the_column_is_named() {
        let err = parquet_documents(bytes::Bytes::from_static(b"{\"text\": \"x\"}\n"), "text")
            .unwrap_err();
        assert!(err.contains("not a Parquet file"), "{err}");
        let err = parquet_documents(bytes::Bytes::from_static(b"PAR1 but nothing else"), "text")
            .unwrap_err();
        assert!(err.contains("not readable Parquet"), "{err}");
    }

    #[test]
    fn shards_in_any_compression_read_as_their_documents_and_empty_ones_as_none() {
        let jsonl = b"{\"text\": \"one\"}\n{\"text\": \"two\", \"domain\": \"d\"}\n".to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &jsonl).unwrap();
        let zst = zstd::encode_all(jsonl.as_slice(), 3).unwrap();
        for bytes in [jsonl.clone(), gz.finish().unwrap(), zst] {
            let docs = documents("k", bytes, SourceFormat::Jsonl, "text").unwrap();
            let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
            assert_eq!(texts, ["one", "two"]);
            assert_eq!(docs[1].domain.as_deref(), Some("d"));
        }
        assert!(
            documents("k", b"\n\n".to_vec(), SourceFormat::Jsonl, "text")
                .unwrap()
                .is_empty()
        );
        let err = documents(
            "shard-3",
            b"{\"txt\": 1}\n".to_vec(),
            SourceFormat::Jsonl,
            "text",
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("shard-3: "), "{err}");
    }
}
