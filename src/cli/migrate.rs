//! `waly migrate`: installs or upgrades waly's schema in one database, as a configured user.

use anyhow::{Context, bail};
use clap::Args;

use waly::migrate::{self, MigrationState};

use super::ConfigArgs;

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Database to migrate (default: the user's name, as libpq does).
    #[arg(long, short)]
    database: Option<String>,
    /// Configured user to connect as (default: the first in the configuration); must be a superuser.
    #[arg(long, short)]
    user: Option<String>,
    /// Only report which migrations are applied.
    #[arg(long)]
    status: bool,
}

pub fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    let user = match &args.user {
        Some(name) => config
            .user(name)
            .with_context(|| format!("user {name:?} is not in the configuration"))?,
        None => config
            .users
            .first()
            .context("the configuration lists no users to connect as")?,
    };
    let database = args.database.clone().unwrap_or_else(|| user.name.clone());
    let mut pg = tokio_postgres::Config::new();
    pg.host(&config.upstream.host)
        .port(config.upstream.port)
        .user(&user.name)
        .dbname(&database);
    if let Some(password) = &user.password {
        pg.password(password.expose());
    }
    let target = format!(
        "database {database:?} at {} as {:?}",
        config.upstream.address(),
        user.name
    );

    super::runtime()?.block_on(async {
        let (client, connection) = pg
            .connect(tokio_postgres::NoTls)
            .await
            .with_context(|| format!("cannot connect to {target}"))?;
        tokio::spawn(connection);
        if args.status {
            let report = migrate::status(&client).await?;
            for m in &report.migrations {
                let state = match &m.state {
                    MigrationState::Applied { applied_at } => format!("applied {applied_at}"),
                    MigrationState::Pending => "pending".to_owned(),
                    MigrationState::Changed { .. } => "CHANGED since it was applied".to_owned(),
                };
                println!("{}  {state}", m.file);
            }
            for file in &report.unknown {
                println!("{file}  applied, unknown to this waly");
            }
            if !report.is_current() {
                bail!("{target} is not current");
            }
            return Ok(());
        }
        let report = migrate::migrate(&client).await?;
        println!(
            "{target}: applied {} migration(s) {:?}, {} already present",
            report.applied.len(),
            report.applied,
            report.already_present.len()
        );
        anyhow::Ok(())
    })
}
