use std::io::IsTerminal;

use anyhow::Result;
use clap::Parser;
use mixpool::cli::{Cli, LogFormat};

fn main() -> Result<()> {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    match mixpool::cli::run(cli)? {
        0 => Ok(()),
        code => std::process::exit(code),
    }
}
