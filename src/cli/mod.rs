//! The command line: every verb's arguments and where each goes. Client verbs talk to a
//! running server over HTTP (`client`); `local` runs the engine on files; `serve`, `worker`
//! and `migrate` start the service's roles; `demo` and `experiment` start the service and
//! drive it as a client; `token` and `fsck` use the database and the store directly.

pub mod client;
pub mod demo;
pub mod experiment;
pub mod fsck;
pub mod local;
pub mod serve;
pub mod token;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

use crate::config::Config;

/// mixpool: score data mixtures by merging per-partition models.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    /// Log lines as text, or as one JSON object each (for log collectors).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "MIXPOOL_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum RecipesCommand {
    /// The recipes, newest first.
    Ls(client::ListArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// The engine on files, no server needed.
    #[command(subcommand)]
    Local(Box<local::LocalCommand>),
    /// The service on a multi-domain corpus: a pre-trained tiny base, one partition per
    /// domain and an eval set, uploaded through the API; prints the scores of all pairs.
    Demo(demo::DemoArgs),
    /// A reproducible experiment through the service: `paper` runs the paper's protocol on
    /// the multi-domain corpus and writes a report under docs/results/.
    Experiment(experiment::ExperimentArgs),
    /// The HTTP API, with one in-process worker unless --no-worker.
    Serve(serve::ServeArgs),
    /// A standalone worker: start one per GPU, on any number of machines.
    Worker(serve::WorkerArgs),
    /// Create the database if needed and apply the registry's migrations.
    Migrate,
    /// Bases on a running server.
    #[command(subcommand)]
    Bases(client::BasesCommand),
    /// Partitions on a running server: add (upload), ls, rm.
    #[command(subcommand)]
    Partitions(client::PartitionsCommand),
    /// Evaluation sets on a running server: add (upload), ls.
    #[command(subcommand, name = "eval-sets")]
    EvalSets(client::EvalSetsCommand),
    /// Recipes on a running server.
    #[command(subcommand)]
    Recipes(RecipesCommand),
    /// The job queue of a running server: ls, watch (live progress).
    #[command(subcommand)]
    Jobs(client::JobsCommand),
    /// One mixture's perplexity on an eval set (training and scoring waited for).
    Score(client::ScoreArgs),
    /// A CI gate: a mixture's perplexity against a baseline mixture or a ceiling, on each
    /// eval set; exit 0 when it holds, 1 when it does not, 2 for usage or server errors.
    Check(client::CheckArgs),
    /// Score every subset of partitions (or a list of mixtures) on eval sets, ranked.
    Sweep(client::SweepArgs),
    /// Train models on mixtures' unions and report how well the proxies rank them.
    Validate(client::ValidateArgs),
    /// Search the mixture weights of partitions that minimise an objective over eval sets.
    Search(client::SearchArgs),
    /// Download a mixture's merged model from a running server as a Hugging Face directory.
    Export(client::ExportArgs),
    /// API tokens (on the database directly): create, revoke, ls.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Print a shell completion script: `mixpool completions bash > ~/.local/share/bash-completion/completions/mixpool`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Check the registry against the object store (missing, corrupt and orphaned objects,
    /// ready models without weights, expired leases); exit 0 clean, 1 problems, 2 error.
    Fsck(fsck::FsckArgs),
}

/// Runs a parsed command; the process's exit code (0 unless a verb says otherwise: `check`
/// and `fsck` exit 1 when what they check does not hold, 2 on an error).
pub fn run(cli: Cli) -> Result<i32> {
    // The settings, read once; verbs that talk to a server over HTTP do without them.
    let settings = Config::load();
    let config = || -> Result<Config> {
        match &settings {
            Ok(config) => Ok(config.clone()),
            Err(e) => Err(anyhow::anyhow!("{e:#}")),
        }
    };
    let done = |r: Result<()>| r.map(|()| 0);
    match cli.command {
        Command::Local(command) => done(local::run(*command, &config()?)),
        Command::Demo(args) => done(runtime()?.block_on(demo::run(args, &config()?))),
        Command::Experiment(args) => done(runtime()?.block_on(experiment::run(args, &config()?))),
        Command::Serve(args) => done(runtime()?.block_on(serve::serve(args, &config()?))),
        Command::Worker(args) => done(runtime()?.block_on(serve::worker(args, &config()?))),
        Command::Migrate => done(runtime()?.block_on(serve::migrate(&config()?))),
        Command::Bases(command) => done(runtime()?.block_on(client::bases(command))),
        Command::Partitions(command) => done(runtime()?.block_on(client::partitions(command))),
        Command::EvalSets(command) => done(runtime()?.block_on(client::eval_sets(command))),
        Command::Recipes(RecipesCommand::Ls(args)) => {
            done(runtime()?.block_on(client::recipes(args)))
        }
        Command::Jobs(command) => done(runtime()?.block_on(client::jobs(command))),
        Command::Score(args) => done(runtime()?.block_on(client::score(args))),
        Command::Check(args) => match runtime()?.block_on(client::check(args)) {
            Ok(holds) => Ok(if holds { 0 } else { 1 }),
            Err(e) => {
                eprintln!("Error: {e:#}");
                Ok(2)
            }
        },
        Command::Sweep(args) => done(runtime()?.block_on(client::sweep(args))),
        Command::Search(args) => done(runtime()?.block_on(client::search(args))),
        Command::Validate(args) => done(runtime()?.block_on(client::validate(args))),
        Command::Export(args) => done(runtime()?.block_on(client::export(args))),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "mixpool", &mut script);
            // A closed pipe (`| head`) is not an error.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            Ok(0)
        }
        Command::Token(command) => done(runtime()?.block_on(token::run(command, &config()?))),
        Command::Fsck(args) => {
            let checked = config().and_then(|config| runtime()?.block_on(fsck::run(args, &config)));
            match checked {
                Ok(code) => Ok(code),
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    Ok(2)
                }
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag and argument of every command says what it is for in `--help`.
    #[test]
    fn every_argument_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.get_help().is_none() && !matches!(id, "help" | "version") {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "mixpool", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}
