use std::io::IsTerminal;

use anyhow::Result;
use clap::{Parser, Subcommand};
use mixpool::demo::{self, DemoArgs};
use mixpool::local::{self, LocalCommand};

/// mixpool: score data mixtures by merging per-partition models.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The engine on files, no server needed.
    #[command(subcommand)]
    Local(Box<LocalCommand>),
    /// Pre-train a tiny base on a multi-domain corpus, train one unit per domain, and print
    /// the perplexity of every merged pair.
    Demo(DemoArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Cli::parse().command {
        Command::Local(command) => local::run(*command),
        Command::Demo(args) => demo::run(args),
    }
}
