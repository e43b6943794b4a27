//! `mixpool token create|revoke|ls`: API tokens, managed on the database directly (so the
//! first admin token can be made before any server runs).

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::registry::RegistryError;
use crate::registry::tokens::{self, Scope};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it (shown only now: only a hash of it is kept).
    Create {
        /// A name for the token, unique among live tokens (e.g. the pipeline using it).
        #[arg(long)]
        name: String,
        /// read: GET requests where the server closes them; write: uploads, scores,
        /// sweeps, deletes; admin: /v1/admin/ too. Each includes the ones before.
        #[arg(long, value_enum)]
        scope: Scope,
    },
    /// Revoke a live token by name or id: requests with it are refused from now on.
    Revoke {
        /// The token's name or id.
        token: String,
    },
    /// Every token, revoked ones included (never their secrets).
    Ls {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: TokenCommand, config: &crate::config::Config) -> Result<()> {
    let pool = crate::app::database(config).await?;
    match command {
        TokenCommand::Create { name, scope } => match tokens::create(&pool, &name, scope).await {
            Ok((token, text)) => {
                eprintln!(
                    "token {:?} ({} scope) created; it is shown only this once:",
                    token.name, token.scope
                );
                println!("{text}");
            }
            Err(RegistryError::NameTaken { .. }) => {
                bail!("a live token is named {name:?}: revoke it first or choose another name")
            }
            Err(e) => return Err(e.into()),
        },
        TokenCommand::Revoke { token } => match tokens::revoke(&pool, &token).await? {
            Some(t) => println!("revoked {:?} ({})", t.name, t.id),
            None => bail!("no live token named {token:?} or with that id (`mixpool token ls`)"),
        },
        TokenCommand::Ls { json } => {
            let all = tokens::list(&pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(());
            }
            let mut table = comfy_table::Table::new();
            table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
            table.set_header(["name", "scope", "id", "created", "last used", "revoked"]);
            let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or("-".to_string(), |t| t.format("%Y-%m-%d %H:%M").to_string())
            };
            for t in &all {
                table.add_row([
                    t.name.clone(),
                    t.scope.to_string(),
                    t.id.to_string(),
                    when(Some(t.created_at)),
                    when(t.last_used_at),
                    when(t.revoked_at),
                ]);
            }
            println!("{table}");
        }
    }
    Ok(())
}

/// The admin token that the demo and the experiment use for their own requests, kept in
/// `DATA/<name>.token` (readable by its owner only): read back while it is live, made anew
/// (and the old one revoked) otherwise. Returns the token and whether it is new.
pub async fn local_admin(
    pool: &sqlx::PgPool,
    data: &std::path::Path,
    name: &str,
) -> Result<(String, bool)> {
    let path = data.join(format!("{name}.token"));
    if let Ok(text) = std::fs::read_to_string(&path) {
        let text = text.trim();
        if tokens::verify(pool, text)
            .await?
            .is_some_and(|t| t.name == name && t.scope == Scope::Admin)
        {
            return Ok((text.to_string(), false));
        }
    }
    tokens::revoke(pool, name).await?;
    let (_, text) = tokens::create(pool, name, Scope::Admin).await?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    writeln!(file, "{text}")?;
    Ok((text, true))
}
