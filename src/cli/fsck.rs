//! `mixpool fsck [--repair] [--json] [--grace SECONDS]`: [`crate::fsck`] on the settings'
//! database and store, as a report on stdout and an exit code.

use anyhow::Result;
use clap::Args;

use crate::config::Config;
use crate::fsck::check;

#[derive(Args)]
pub struct FsckArgs {
    /// Remove orphaned objects and return jobs with expired leases to the queue.
    #[arg(long)]
    pub repair: bool,
    /// The report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Leave alone an upload's object without its row younger than this many seconds (it
    /// may belong to an upload in flight); 0 once no upload can be.
    #[arg(long, default_value_t = crate::fsck::IN_FLIGHT.as_secs(), value_name = "SECONDS")]
    pub grace: u64,
    #[command(flatten)]
    pub service: super::serve::ServiceArgs,
}

/// `mixpool fsck`: exit 0 when clean (or everything found was repaired), 1 when problems
/// remain, 2 on an error (the caller's `Err`).
pub async fn run(args: FsckArgs, config: &Config) -> Result<i32> {
    let config = args.service.apply(config);
    let pool = crate::app::database(&config).await?;
    let (store, _) = crate::app::store(&config)?;
    let grace = std::time::Duration::from_secs(args.grace);
    let report = check(&pool, &store, args.repair, grace).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for p in &report.problems {
            let state = if p.repaired { " (repaired)" } else { "" };
            let kind = serde_json::to_value(&p.kind)?;
            let kind = kind.as_str().unwrap_or_default();
            println!("{kind}: {} — {}{state}", p.subject, p.detail);
        }
        println!(
            "{} objects ({:.1} MB) checked; {} problems, {} unresolved; {} left alone as \
             uploads that may be in flight (younger than {} s)",
            report.objects,
            report.bytes as f64 / 1e6,
            report.problems.len(),
            report.unresolved(),
            report.in_flight,
            args.grace
        );
    }
    Ok(if report.unresolved() == 0 { 0 } else { 1 })
}
