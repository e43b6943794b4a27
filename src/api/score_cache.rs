//! The answers a server has given to score requests, kept in memory.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant as StdInstant};

use serde_json::Value;

use super::ApiError;

/// Answers already given, by request. A score never changes and a name always means the
/// same row, so a cached answer stays true; only the defaults (the newest base and recipe)
/// can move, so they are looked up again after [`DEFAULTS_TTL`] (at once after this server
/// creates a base or recipe). A cached answer reads no database.
#[derive(Default)]
pub struct ScoreCache {
    answers: RwLock<HashMap<String, Value>>,
    defaults: Mutex<Option<(StdInstant, String, String)>>,
}

const DEFAULTS_TTL: Duration = Duration::from_secs(1);
/// Past this many answers the cache starts over, which bounds its memory.
const MAX_ANSWERS: usize = 100_000;

impl ScoreCache {
    /// Forgets the defaults (a base or recipe was just created).
    pub fn defaults_changed(&self) {
        *self.defaults.lock().unwrap() = None;
    }

    /// The base and recipe names a request means.
    pub(super) async fn names(
        &self,
        pool: &sqlx::PgPool,
        base: Option<&str>,
        recipe: Option<&str>,
    ) -> Result<(String, String), ApiError> {
        if let (Some(base), Some(recipe)) = (base, recipe) {
            return Ok((base.to_string(), recipe.to_string()));
        }
        let fresh = self
            .defaults
            .lock()
            .unwrap()
            .clone()
            .filter(|(at, _, _)| at.elapsed() < DEFAULTS_TTL);
        let (default_base, default_recipe) = match fresh {
            Some((_, b, r)) => (b, r),
            None => {
                let b = crate::service::resolve::base(pool, None).await?.name;
                let r = crate::service::resolve::recipe(pool, None).await?.name;
                *self.defaults.lock().unwrap() = Some((StdInstant::now(), b.clone(), r.clone()));
                (b, r)
            }
        };
        Ok((
            base.map(str::to_string).unwrap_or(default_base),
            recipe.map(str::to_string).unwrap_or(default_recipe),
        ))
    }

    /// Forgets every answer (a partition was deleted: its name may come to mean another).
    pub fn clear(&self) {
        self.answers.write().unwrap().clear();
        self.defaults_changed();
    }

    pub(super) fn get(&self, key: &str) -> Option<Value> {
        self.answers.read().unwrap().get(key).cloned()
    }

    pub(super) fn put(&self, key: String, answer: Value) {
        let mut answers = self.answers.write().unwrap();
        if answers.len() >= MAX_ANSWERS {
            answers.clear();
        }
        answers.insert(key, answer);
    }
}
