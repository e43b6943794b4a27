//! A base imported from a Hugging Face checkpoint directory (a tar, gzip or not, or a
//! folder in the object store): checked and converted like `mixpool local import` on a
//! blocking thread, its weights and side files stored, then its row written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::engine::checkpoint::{self, WEIGHTS_FILE};
use crate::engine::hf::{self, HfError};
use crate::error::{Error, Result};
use crate::registry::{RegistryError, bases, recipes};
use crate::service::{resolve, units};
use crate::store::{Store, keys};

/// Where the checkpoint is.
pub enum Source<'a> {
    /// A tar (optionally gzip) of the checkpoint directory.
    Tar(&'a Path),
    /// A folder in the object store.
    Store(&'a str),
}

/// An import's name and settings, checked before the checkpoint is read.
pub struct Checked {
    name: String,
    /// With `train=all`: the recipe whose unit models are queued with the base.
    recipe: Option<recipes::Recipe>,
}

/// Checks the name (well formed, not taken) and, with `train_all`, that a recipe exists.
pub async fn check(pool: &PgPool, name: &str, train_all: bool) -> Result<Checked> {
    crate::ingest::check_name(name).map_err(|e| Error::invalid("invalid_name", e.to_string()))?;
    if bases::find(pool, name).await?.is_some() {
        return Err(name_taken(name));
    }
    let recipe = match train_all {
        true => Some(resolve::recipe(pool, None).await?),
        false => None,
    };
    Ok(Checked {
        name: name.to_string(),
        recipe,
    })
}

/// Imports the checkpoint at `source`, working in `scratch`: the base row (with `import`,
/// the config fields ignored, and `training`, the unit models queued).
pub async fn import(
    pool: &PgPool,
    store: &Store,
    scratch: &Path,
    source: Source<'_>,
    checked: &Checked,
    strict: bool,
) -> Result<Value> {
    let dir = scratch.join("checkpoint");
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(Error::internal)?;
    match source {
        Source::Store(prefix) => fetch_folder(store, prefix, &dir).await?,
        Source::Tar(tar) => {
            let (tar, dest) = (tar.to_path_buf(), dir.clone());
            tokio::task::spawn_blocking(move || unpack(&tar, &dest))
                .await
                .map_err(Error::internal)??;
        }
    }
    let source = dir;
    let converted = scratch.join("converted");
    let (from, to) = (checkpoint_root(&source), converted.clone());
    let strictness = match strict {
        true => hf::Strictness::Strict,
        false => hf::Strictness::ByEffect,
    };
    let imported = tokio::task::spawn_blocking(move || hf::import(&from, &to, strictness))
        .await
        .map_err(Error::internal)?
        .map_err(|e| match e {
            HfError::Io { .. } => Error::internal(e),
            e => Error::unprocessable("invalid_checkpoint", e.to_string()),
        })?;
    let config = checkpoint::read_config(&converted).map_err(Error::internal)?;

    let id = Uuid::new_v4();
    let weights = store
        .put_file(
            &converted.join(WEIGHTS_FILE),
            &keys::base(&id, WEIGHTS_FILE),
        )
        .await?;
    let mut files = BTreeMap::new();
    for path in checkpoint::side_files(&converted) {
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let stored = store.put_file(&path, &keys::base(&id, &file)).await?;
        files.insert(file, stored.sha256);
    }
    let mut tx = pool.begin().await?;
    bases::insert(&mut tx, id, &checked.name, &config, Some(&weights.sha256))
        .await
        .map_err(|e| match e {
            RegistryError::NameTaken { name, .. } => name_taken(&name),
            RegistryError::Database(e) => e.into(),
        })?;
    let base = bases::set_files(&mut tx, id, &files).await?;
    let training = match &checked.recipe {
        Some(recipe) => Some(units::train_all(&mut tx, id, recipe.id).await?),
        None => None,
    };
    tx.commit().await?;
    let mut answer = json!(base);
    answer["import"] = json!(imported);
    if let Some(training) = training {
        answer["training"] = json!(training);
    }
    Ok(answer)
}

fn name_taken(name: &str) -> Error {
    Error::conflict(
        "name_taken",
        format!("the base name {name:?} is taken; choose another name"),
    )
}

/// Unpacks a tar, gzip-compressed or not, refusing links and paths outside the folder.
fn unpack(tar: &Path, dest: &Path) -> Result<()> {
    let bad = |e: std::io::Error| {
        Error::invalid(
            "invalid_archive",
            format!("not a readable tar archive: {e}"),
        )
    };
    let mut magic = [0u8; 2];
    let mut file = std::fs::File::open(tar).map_err(Error::internal)?;
    std::io::Read::read_exact(&mut file, &mut magic).map_err(bad)?;
    let file = std::fs::File::open(tar).map_err(Error::internal)?;
    let reader: Box<dyn std::io::Read> = if magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            return Err(Error::invalid(
                "invalid_archive",
                "the archive may hold only files and folders",
            ));
        }
        // `unpack_in` refuses paths that would leave `dest`.
        if !entry.unpack_in(dest).map_err(bad)? {
            return Err(Error::invalid(
                "invalid_archive",
                "the archive holds a path outside its folder",
            ));
        }
    }
    Ok(())
}

/// The folder holding `config.json`: the archive's top level or its one folder.
fn checkpoint_root(dir: &Path) -> PathBuf {
    if dir.join(checkpoint::CONFIG_FILE).exists() {
        return dir.to_path_buf();
    }
    let folders: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    match folders.as_slice() {
        [only] => only.clone(),
        _ => dir.to_path_buf(),
    }
}

/// Copies the files directly under `prefix` in the object store into `dest`.
async fn fetch_folder(store: &Store, prefix: &str, dest: &Path) -> Result<()> {
    let prefix = prefix.trim_matches('/');
    let keys = store.list(prefix).await?;
    if keys.is_empty() {
        return Err(Error::not_found(format!("store folder {prefix:?}")));
    }
    for key in keys {
        let Some(name) = key
            .strip_prefix(prefix)
            .map(|n| n.trim_start_matches('/'))
            .filter(|n| !n.is_empty() && !n.contains('/'))
        else {
            continue;
        };
        let data = store
            .get_optional(&key)
            .await?
            .ok_or_else(|| Error::not_found(format!("store object {key:?}")))?;
        tokio::fs::write(dest.join(name), &data)
            .await
            .map_err(Error::internal)?;
    }
    Ok(())
}
