//! `mixpool serve`, `mixpool worker` and `mixpool migrate`: the service's roles. Their flags
//! override the settings (`Config`), and [`crate::app`] builds the service from them. Roles
//! share nothing but the database and the object store.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::app::{self, App};
use crate::config::Config;

/// Flags every role takes.
#[derive(Args, Clone)]
pub struct ServiceArgs {
    /// The folder for the default store and the workers' scratch space [default: service.data
    /// in the settings].
    #[arg(long, env = "MIXPOOL_DATA")]
    pub data: Option<PathBuf>,
    /// file:///path or s3://bucket/prefix (default file://DATA/store).
    #[arg(long, env = "MIXPOOL_STORE")]
    pub store: Option<String>,
    #[command(flatten)]
    pub engine: Engine,
}

/// Where models run.
#[derive(Args, Clone)]
pub struct Engine {
    /// auto (CUDA when present), cpu or cuda:N [default: engine.device in the settings].
    #[arg(long, env = "MIXPOOL_DEVICE")]
    pub device: Option<String>,
    /// CPU threads for libtorch, 0 for one per core [default: engine.threads in the
    /// settings].
    #[arg(long, env = "MIXPOOL_THREADS")]
    pub threads: Option<i32>,
}

impl Engine {
    /// The settings with these flags applied.
    pub fn apply(&self, config: &mut Config) {
        if let Some(device) = &self.device {
            config.engine.device = device.clone();
        }
        if let Some(threads) = self.threads {
            config.engine.threads = threads;
        }
    }
}

impl ServiceArgs {
    /// The settings with these flags applied.
    pub fn apply(&self, config: &Config) -> Config {
        let mut config = config.clone();
        if let Some(data) = &self.data {
            config.service.data = data.display().to_string();
        }
        if let Some(store) = self.store.as_ref().filter(|s| !s.is_empty()) {
            config.service.store = store.clone();
        }
        self.engine.apply(&mut config);
        config
    }
}

#[derive(Args)]
pub struct ServeArgs {
    /// The address to listen on, e.g. 127.0.0.1:8080 (port 0: any free port).
    #[arg(long, env = "MIXPOOL_LISTEN")]
    pub listen: Option<String>,
    /// Run the API only, without the in-process worker.
    #[arg(long)]
    pub no_worker: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
}

impl ServeArgs {
    /// The settings with these flags applied.
    pub fn apply(&self, config: &Config) -> Config {
        let mut config = self.service.apply(config);
        if let Some(listen) = &self.listen {
            config.service.listen = listen.clone();
        }
        if self.no_worker {
            config.service.worker = false;
        }
        config
    }

    /// Starts the service on the settings' address.
    pub async fn start(&self, config: &Config) -> Result<App> {
        let app = App::build(&self.apply(config), None).await?;
        tracing::info!("mixpool serving on {}", app.url());
        Ok(app)
    }
}

#[derive(Args)]
pub struct WorkerArgs {
    /// Job kinds this worker runs, comma-separated (default: every kind).
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(crate::jobs::names()))]
    pub kinds: Vec<String>,
    #[command(flatten)]
    pub service: ServiceArgs,
}

impl WorkerArgs {
    /// The kinds asked for, or every kind.
    pub fn kinds(&self) -> Vec<&'static str> {
        crate::jobs::names()
            .into_iter()
            .filter(|k| self.kinds.is_empty() || self.kinds.iter().any(|asked| asked == k))
            .collect()
    }
}

pub async fn migrate(config: &Config) -> Result<()> {
    app::database(config).await?;
    tracing::info!("migrations applied");
    Ok(())
}

/// `mixpool serve`: until SIGTERM or Ctrl-C.
pub async fn serve(args: ServeArgs, config: &Config) -> Result<()> {
    let app = args.start(config).await?;
    app.stop_on_signal();
    app.wait().await
}

/// `mixpool worker`: until SIGTERM or Ctrl-C, when it finishes its job (or hands a training
/// back) and claims no other.
pub async fn worker(args: WorkerArgs, config: &Config) -> Result<()> {
    let config = args.service.apply(config);
    let (pool, store, data) = app::storage(&config).await?;
    let mut worker = app::worker(&config, pool, store, &data)?;
    worker.kinds = args.kinds();
    tracing::info!(owner = worker.owner, "worker started");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    app::on_signal(move || {
        let _ = stop.send(true);
    });
    worker.run(stopped).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerArgs,
    }

    #[test]
    fn a_worker_runs_every_kind_unless_told_otherwise() {
        // A deployment of `serve --no-worker` and plain `worker`s (docker-compose.yml) must
        // run validations and exports too.
        let all = Cli::try_parse_from(["worker"]).unwrap().worker.kinds();
        assert_eq!(all, crate::jobs::names());
        let some = Cli::try_parse_from(["worker", "--kinds", "score,sweep"]).unwrap();
        assert_eq!(some.worker.kinds(), ["score", "sweep"]);
        assert!(Cli::try_parse_from(["worker", "--kinds", "nonsense"]).is_err());
    }
}
