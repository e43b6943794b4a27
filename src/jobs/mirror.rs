//! A training's state mirrored into the store, so that the worker that takes over a job
//! whose worker died resumes where that one last saved (and ends with the same weights).

use std::path::PathBuf;

use super::JobError;
use crate::store::Store;

/// The engine's train state mirrored into the store under `models/<id>/train_state/`, with a
/// manifest of the files' hashes, so that the worker that takes over a job whose worker
/// died resumes where that one last saved (and ends with the same weights).
pub struct StateMirror {
    pub store: Store,
    /// The store folder, e.g. `models/<id>/train_state`.
    pub prefix: String,
    /// The engine's local state folder.
    pub dir: PathBuf,
    /// The step of the last state uploaded or restored.
    pub uploaded: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Manifest {
    step: u64,
    /// File name → sha256.
    files: std::collections::BTreeMap<String, String>,
}

impl StateMirror {
    fn key(&self, file: &str) -> String {
        format!("{}/{file}", self.prefix)
    }

    /// Fetches the mirrored state into the local folder, verified, when there is one.
    pub async fn restore(&mut self) -> Result<(), JobError> {
        let Some(manifest) = self.store.get_optional(&self.key("manifest.json")).await? else {
            return Ok(());
        };
        let manifest: Manifest = serde_json::from_slice(&manifest).map_err(|e| {
            JobError::Fatal(format!("train state manifest in {}: {e}", self.prefix))
        })?;
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| JobError::Retryable(e.to_string()))?;
        for (file, sha) in &manifest.files {
            self.store
                .download_verified(&self.key(file), sha, &self.dir.join(file))
                .await?;
        }
        tracing::info!(state = %self.prefix, step = manifest.step, "resuming from the mirrored train state");
        self.uploaded = manifest.step;
        Ok(())
    }

    /// Uploads the local state when it is newer than the last one mirrored; the manifest is
    /// written last, so it only ever names complete files, and the states it no longer
    /// names are removed after it (at most two states exist, and only for that moment).
    pub async fn push(&mut self) -> Result<(), crate::store::StoreError> {
        let Ok(text) = tokio::fs::read(self.dir.join("train_state.json")).await else {
            return Ok(());
        };
        let saved: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
        let (Some(step), Some(tensors)) = (saved["step"].as_u64(), saved["tensors"].as_str())
        else {
            return Ok(());
        };
        if step <= self.uploaded {
            return Ok(());
        }
        let mut files = std::collections::BTreeMap::new();
        for file in [tensors, "train_state.json"] {
            let stored = self
                .store
                .put_file(&self.dir.join(file), &self.key(file))
                .await?;
            files.insert(file.to_string(), stored.sha256);
        }
        let manifest = serde_json::to_vec(&Manifest { step, files }).expect("manifests serialise");
        self.store
            .put_bytes(&self.key("manifest.json"), manifest.into())
            .await?;
        self.uploaded = step;
        // The manifest names the new state now: earlier ones are of no use to anyone.
        for key in self.store.list(&self.prefix).await? {
            let file = key.rsplit('/').next().unwrap_or_default();
            if file.starts_with("state-") && file != tensors {
                self.store.delete(&key).await?;
            }
        }
        Ok(())
    }

    /// Removes the mirror once the model is stored.
    pub async fn forget(store: &Store, prefix: &str) {
        if let Ok(keys) = store.list(prefix).await {
            for key in keys {
                let _ = store.delete(&key).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_mirror_keeps_only_the_latest_complete_state_at_every_checkpoint() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(
            &format!("file://{}", root.path().join("store").display()),
            &crate::store::S3Config::default(),
        )
        .unwrap();
        let dir = root.path().join("local");
        std::fs::create_dir_all(&dir).unwrap();
        let prefix = "models/m/train_state".to_string();
        let mut mirror = StateMirror {
            store: store.clone(),
            prefix: prefix.clone(),
            dir: dir.clone(),
            uploaded: 0,
        };
        for step in [3u64, 6, 9] {
            // As the engine saves: the new tensors, then the file naming them, then the old
            // tensors go.
            let tensors = format!("state-{step}.safetensors");
            std::fs::write(dir.join(&tensors), vec![step as u8; 1000]).unwrap();
            let named = serde_json::json!({"step": step, "tensors": tensors});
            std::fs::write(dir.join("train_state.json"), named.to_string()).unwrap();
            if step > 3 {
                std::fs::remove_file(dir.join(format!("state-{}.safetensors", step - 3))).unwrap();
            }
            mirror.push().await.unwrap();
            let states: Vec<String> = store
                .list(&prefix)
                .await
                .unwrap()
                .into_iter()
                .filter(|k| k.contains("/state-"))
                .collect();
            assert_eq!(states, [format!("{prefix}/{tensors}")], "step {step}");
            let manifest: Manifest = serde_json::from_slice(
                &store
                    .get_optional(&mirror.key("manifest.json"))
                    .await
                    .unwrap()
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(manifest.step, step);
        }
        // A fresh worker restores the latest state.
        let mut other = StateMirror {
            store,
            prefix,
            dir: root.path().join("other"),
            uploaded: 0,
        };
        other.restore().await.unwrap();
        assert_eq!(other.uploaded, 9);
        assert_eq!(
            std::fs::read(other.dir.join("state-9.safetensors")).unwrap(),
            vec![9u8; 1000]
        );
    }
}
