//! The replay checkpoint in the target: `waly_replay.checkpoint`, one row holding the position of the last
//! record applied. It is written in the same transaction as the batch it covers, so after a crash the
//! target holds exactly the records up to it. Nothing else may live in the `waly_replay` schema.

use tokio_postgres::Client;

use super::ReplayError;
use crate::log::Position;

/// Creates the checkpoint table if needed and returns the position it holds (`Position(0)`: nothing
/// applied yet). Runs as a replica so a waly-migrated target records none of this as DDL.
pub async fn load(target: &Client) -> Result<Position, ReplayError> {
    let created = target
        .batch_execute(
            "begin;
             set local session_replication_role = replica;
             create schema if not exists waly_replay;
             create table if not exists waly_replay.checkpoint (position bigint not null);
             insert into waly_replay.checkpoint (position)
               select 0 where not exists (select from waly_replay.checkpoint);
             commit;",
        )
        .await;
    if let Err(e) = created {
        let _ = target.batch_execute("rollback").await;
        return Err(ReplayError::target("create waly_replay.checkpoint", &e));
    }
    let row = target
        .query_one("select max(position) from waly_replay.checkpoint", &[])
        .await
        .map_err(|e| ReplayError::target("read waly_replay.checkpoint", &e))?;
    let position: Option<i64> = row.get(0);
    Ok(Position(position.unwrap_or(0).max(0) as u64))
}

/// Moves the checkpoint to `position`, inside the caller's transaction.
pub async fn store(target: &Client, position: Position) -> Result<(), ReplayError> {
    let position = i64::try_from(position.0).unwrap_or(i64::MAX);
    target
        .execute(
            "update waly_replay.checkpoint set position = $1",
            &[&position],
        )
        .await
        .map_err(|e| ReplayError::target("update waly_replay.checkpoint", &e))?;
    Ok(())
}
