//! waly's own schema in the application's database: the SQL files of `migrations/`, compiled into the
//! binary, applied in version order, each at most once and in a transaction of its own, and recorded with
//! the SHA-256 of its text in `waly.migrations`.
//!
//! Owns the runner and the table of embedded migrations. Concurrent runs (several `waly serve` starting at
//! once) are serialised by a transaction-scoped advisory lock. The schema itself lives in the SQL files; this
//! module only runs bookkeeping queries. It must never apply anything when an applied file has changed or
//! the database knows migrations this binary does not, and must never run a migration outside a transaction.

mod embedded;
mod error;

use std::collections::HashMap;

use tokio_postgres::Client;

pub use embedded::MIGRATIONS;
pub use error::{MigrateError, PgFailure};

/// The key of the advisory lock that serialises migrators ("walymigr").
const LOCK_KEY: i64 = 0x7761_6c79_6d69_6772;

/// One file of `migrations/`, `NNNN_name.sql`. Its text must not start or end a transaction.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
    /// Only a superuser may apply it (it creates event triggers); checked before anything is applied.
    pub requires_superuser: bool,
}

impl Migration {
    pub fn file_name(&self) -> String {
        file_name(self.version, self.name)
    }
}

fn file_name(version: i32, name: &str) -> String {
    format!("{version:04}_{name}.sql")
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// Versions this run applied, in order.
    pub applied: Vec<i32>,
    /// Versions that were applied before (by an earlier or a concurrent run).
    pub already_present: Vec<i32>,
}

/// Where each embedded migration stands in one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    pub migrations: Vec<MigrationStatus>,
    /// Applied migrations this binary does not know, as file names.
    pub unknown: Vec<String>,
}

impl StatusReport {
    /// Every embedded migration applied, unchanged, and nothing unknown.
    pub fn is_current(&self) -> bool {
        self.unknown.is_empty()
            && self
                .migrations
                .iter()
                .all(|m| matches!(m.state, MigrationState::Applied { .. }))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: i32,
    pub file: String,
    pub state: MigrationState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationState {
    /// `applied_at` as Postgres renders a timestamptz.
    Applied {
        applied_at: String,
    },
    Pending,
    /// Applied, but the file differs from what was applied.
    Changed {
        recorded: String,
        embedded: String,
    },
}

/// Applies waly's pending migrations to the database `client` is connected to, which must not be inside a
/// transaction.
pub async fn migrate(client: &Client) -> Result<MigrateReport, MigrateError> {
    migrate_with(client, MIGRATIONS).await
}

/// [`migrate`] with a given set of migrations, in increasing version order (tests use this to model a
/// changed or an additional file).
pub async fn migrate_with(
    client: &Client,
    migrations: &[Migration],
) -> Result<MigrateReport, MigrateError> {
    debug_assert!(migrations.windows(2).all(|w| w[0].version < w[1].version));
    let checksums = checksums(client, migrations).await?;
    let mut applied_now = Vec::new();
    loop {
        client
            .batch_execute("begin")
            .await
            .map_err(MigrateError::postgres(
                "could not begin a migration transaction",
            ))?;
        let step = apply_next(client, migrations, &checksums).await;
        let end = match &step {
            Ok(_) => "commit",
            Err(_) => "rollback",
        };
        let ended = client.batch_execute(end).await;
        let next = step?;
        ended.map_err(MigrateError::postgres("could not commit a migration"))?;
        match next {
            Some(m) => {
                tracing::info!(version = m.version, file = %m.file_name(), "applied waly migration");
                applied_now.push(m.version);
            }
            None => break,
        }
    }
    let already_present: Vec<i32> = migrations
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied_now.contains(v))
        .collect();
    if applied_now.is_empty() {
        tracing::debug!(versions = ?already_present, "waly's schema is up to date");
    }
    Ok(MigrateReport {
        applied: applied_now,
        already_present,
    })
}

/// Where each migration stands; reads only, takes no lock.
pub async fn status(client: &Client) -> Result<StatusReport, MigrateError> {
    let checksums = checksums(client, MIGRATIONS).await?;
    let applied = applied(client).await?;
    let migrations = MIGRATIONS
        .iter()
        .zip(&checksums)
        .map(|(m, embedded)| MigrationStatus {
            version: m.version,
            file: m.file_name(),
            state: match applied.get(&m.version) {
                None => MigrationState::Pending,
                Some(a) if &a.checksum != embedded => MigrationState::Changed {
                    recorded: a.checksum.clone(),
                    embedded: embedded.clone(),
                },
                Some(a) => MigrationState::Applied {
                    applied_at: a.applied_at.clone(),
                },
            },
        })
        .collect();
    let mut unknown: Vec<(i32, String)> = applied
        .iter()
        .filter(|(v, _)| !MIGRATIONS.iter().any(|m| m.version == **v))
        .map(|(v, a)| (*v, file_name(*v, &a.name)))
        .collect();
    unknown.sort();
    Ok(StatusReport {
        migrations,
        unknown: unknown.into_iter().map(|(_, f)| f).collect(),
    })
}

/// One step, inside the caller's transaction: takes the lock, checks the ledger against the files, and
/// applies the first pending migration, if any.
async fn apply_next<'m>(
    client: &Client,
    migrations: &'m [Migration],
    checksums: &[String],
) -> Result<Option<&'m Migration>, MigrateError> {
    client
        .execute("select pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(MigrateError::postgres(
            "could not take waly's migration lock",
        ))?;
    let applied = applied(client).await?;
    verify(migrations, checksums, &applied)?;
    let pending: Vec<(&Migration, &String)> = migrations
        .iter()
        .zip(checksums)
        .filter(|(m, _)| !applied.contains_key(&m.version))
        .collect();
    let Some(&(next, checksum)) = pending.first() else {
        return Ok(None);
    };
    if let Some((needs, _)) = pending.iter().find(|(m, _)| m.requires_superuser) {
        let row = client
            .query_one(
                "select current_user::text, current_setting('is_superuser') = 'on'",
                &[],
            )
            .await
            .map_err(MigrateError::postgres("could not read the current role"))?;
        if !row.get::<_, bool>(1) {
            return Err(MigrateError::NotSuperuser {
                role: row.get(0),
                file: needs.file_name(),
            });
        }
    }
    tracing::debug!(file = %next.file_name(), "applying waly migration");
    client
        .batch_execute(next.sql)
        .await
        .map_err(|e| MigrateError::Failed {
            file: next.file_name(),
            failure: PgFailure::from(&e),
        })?;
    client
        .execute(
            "insert into waly.migrations (version, name, checksum) values ($1, $2, $3)",
            &[&next.version, &next.name, checksum],
        )
        .await
        .map_err(MigrateError::postgres(
            "could not record a migration in waly.migrations",
        ))?;
    Ok(Some(next))
}

/// Refuses a changed file or a migration this binary does not know.
fn verify(
    migrations: &[Migration],
    checksums: &[String],
    applied: &HashMap<i32, Applied>,
) -> Result<(), MigrateError> {
    let mut versions: Vec<&i32> = applied.keys().collect();
    versions.sort();
    for version in versions {
        let a = &applied[version];
        let Some(i) = migrations.iter().position(|m| m.version == *version) else {
            return Err(MigrateError::UnknownApplied {
                file: file_name(*version, &a.name),
            });
        };
        if a.checksum != checksums[i] {
            return Err(MigrateError::Changed {
                file: migrations[i].file_name(),
                recorded: a.checksum.clone(),
                embedded: checksums[i].clone(),
            });
        }
    }
    Ok(())
}

struct Applied {
    name: String,
    checksum: String,
    applied_at: String,
}

/// The ledger; empty before migration 1 created it.
async fn applied(client: &Client) -> Result<HashMap<i32, Applied>, MigrateError> {
    let read = MigrateError::postgres("could not read waly.migrations");
    let exists: bool = client
        .query_one("select to_regclass('waly.migrations') is not null", &[])
        .await
        .map_err(MigrateError::postgres("could not look for waly.migrations"))?
        .get(0);
    if !exists {
        return Ok(HashMap::new());
    }
    let rows = client
        .query(
            "select version, name, checksum, applied_at::text from waly.migrations",
            &[],
        )
        .await
        .map_err(read)?;
    Ok(rows
        .iter()
        .map(|r| {
            let applied = Applied {
                name: r.get(1),
                checksum: r.get(2),
                applied_at: r.get(3),
            };
            (r.get(0), applied)
        })
        .collect())
}

/// SHA-256 of each file's text, hex, computed by Postgres (sha256() since Postgres 11) so waly needs no
/// hashing crate and the ledger holds the same digest `sha256sum` prints for the file.
async fn checksums(client: &Client, migrations: &[Migration]) -> Result<Vec<String>, MigrateError> {
    let texts: Vec<&str> = migrations.iter().map(|m| m.sql).collect();
    let rows = client
        .query(
            "select encode(sha256(convert_to(t, 'UTF8')), 'hex') \
             from unnest($1::text[]) with ordinality as f(t, i) order by i",
            &[&texts],
        )
        .await
        .map_err(MigrateError::postgres(
            "could not compute the migrations' checksums",
        ))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
