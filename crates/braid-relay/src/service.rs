//! Running a relay server or client as a service: until SIGTERM or SIGINT,
//! telling systemd when it is ready and when it stops.

use tokio::signal::unix::{signal, SignalKind};

use crate::client::Client;
use crate::server::Server;
use crate::RelayError;

/// Until SIGTERM or SIGINT. The handlers are in place when this returns,
/// before anything is set up that a stop must undo (transparent mode's
/// rules).
fn terminated() -> Result<impl std::future::Future<Output = ()>, RelayError> {
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    let (Ok(mut term), Ok(mut int)) = handlers else {
        return Err(RelayError::Io("cannot handle SIGTERM and SIGINT".into()));
    };
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    })
}

/// Tell systemd the service is ready (once it really is).
fn ready() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
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
        let stop = terminated()?;
        let server = Server::bind(cfg)?;
        server.run(stop, ready).await
    })
}

pub fn connect(cfg: crate::config::ClientConfig) -> Result<(), RelayError> {
    runtime()?.block_on(async {
        let stop = terminated()?;
        let client = Client::bind(cfg)?;
        client.run(stop, ready).await
    })
}
