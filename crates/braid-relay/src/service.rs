//! Running a relay server or client as a service: until SIGTERM or SIGINT,
//! telling systemd when it is ready and when it stops.

use tokio::signal::unix::{signal, SignalKind};

use crate::client::Client;
use crate::server::Server;
use crate::RelayError;

async fn terminated() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// A multi-threaded runtime: forwarding uses every core.
fn runtime() -> Result<tokio::runtime::Runtime, RelayError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| RelayError::Io(format!("starting the runtime: {e}")))
}

pub fn serve(cfg: crate::config::ServerConfig) -> Result<(), RelayError> {
    runtime()?.block_on(async {
        let server = Server::bind(cfg)?;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        server.run(terminated()).await
    })
}

pub fn connect(cfg: crate::config::ClientConfig) -> Result<(), RelayError> {
    runtime()?.block_on(async {
        let client = Client::bind(cfg)?;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        client.run(terminated()).await
    })
}
