//! `waly serve`.

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use waly::config::Config;
use waly::server::Server;

pub fn run(config: Config) -> anyhow::Result<()> {
    // This runtime only accepts connections and waits for signals; sessions run on the worker threads.
    super::runtime()?.block_on(async {
        let server = Server::bind(config).await?;
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        server
            .run(async move {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            })
            .await;
        anyhow::Ok(())
    })
}
