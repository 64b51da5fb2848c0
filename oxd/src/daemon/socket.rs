//! The control socket: binding it, checking who calls, and reading one request per client.
//!
//! Clients are served in their own tasks; each parsed request goes to the main loop through a
//! channel, with a one-shot channel for the response, so requests are handled one at a time by
//! the task that owns the daemon's state.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path, time::Duration};

use anyhow::{bail, Context as _, Result};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{unix::OwnedWriteHalf, UnixListener, UnixStream},
    sync::{broadcast, mpsc, oneshot},
};

use crate::{
    audit::Record,
    control::{Request, Response, Streamed, Subscription},
};

/// A request and where its response goes.
pub(super) type Call = (Request, oneshot::Sender<Response>);

/// How long a client has to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the control socket: its directory is created 0700 if missing, the socket is 0600,
/// and a stale socket (nobody answering) is replaced.
pub(super) fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot restrict {}", dir.display()))?;
        }
    }
    if path.exists() {
        refuse_if_answering(path)?;
        fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    Ok(listener)
}

/// Fails if a daemon answers on `socket`.
pub(super) fn refuse_if_answering(socket: &Path) -> Result<()> {
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        bail!("another oxd daemon is answering on {}", socket.display());
    }
    Ok(())
}

/// Serves one client: one request line, one response line (a subscription: then its stream).
/// Only peers with the daemon's own uid are answered.
pub(super) async fn serve_client(
    stream: UnixStream,
    calls: mpsc::Sender<Call>,
    decisions: broadcast::Sender<std::sync::Arc<Record>>,
) {
    let allowed = nix::unistd::geteuid().as_raw();
    let response = match stream.peer_cred() {
        Ok(cred) if cred.uid() == allowed => None,
        Ok(cred) => Some(Response::error(format!(
            "uid {} may not control this daemon (only uid {allowed})",
            cred.uid()
        ))),
        Err(e) => Some(Response::error(format!("cannot identify the caller: {e}"))),
    };
    let (read, mut write) = stream.into_split();
    let response = if let Some(r) = response {
        r
    } else {
        let mut line = String::new();
        let mut reader = BufReader::new(read);
        match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => match serde_json::from_str::<Request>(&line) {
                Ok(Request::Subscribe { only }) => {
                    stream_decisions(write, decisions.subscribe(), only).await;
                    return;
                }
                Ok(request) => {
                    let (tx, rx) = oneshot::channel();
                    if calls.send((request, tx)).await.is_err() {
                        return;
                    }
                    rx.await
                        .unwrap_or_else(|_| Response::error("the daemon is shutting down"))
                }
                Err(e) => Response::error(format!("malformed request: {e}")),
            },
            _ => Response::error("no request received"),
        }
    };
    if let Ok(mut bytes) = serde_json::to_vec(&response) {
        bytes.push(b'\n');
        let _ = write.write_all(&bytes).await;
    }
}

/// Writes one line; false once the subscriber is gone.
async fn send_line(write: &mut OwnedWriteHalf, value: &impl serde::Serialize) -> bool {
    let Ok(mut bytes) = serde_json::to_vec(value) else {
        return false;
    };
    bytes.push(b'\n');
    write.write_all(&bytes).await.is_ok()
}

/// A subscription (see [`Request::Subscribe`]): the answer, then every decision `only` wants, as
/// the pump writes it, until the subscriber goes (or the daemon stops).
async fn stream_decisions(
    mut write: OwnedWriteHalf,
    mut decisions: broadcast::Receiver<std::sync::Arc<Record>>,
    only: Subscription,
) {
    if !send_line(&mut write, &Response::done("subscribed")).await {
        return;
    }
    loop {
        let line = match decisions.recv().await {
            Ok(record) if only.wants(&record) => Streamed::Record(Box::new((*record).clone())),
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(n)) => Streamed::Lagged(n),
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if !send_line(&mut write, &line).await {
            return;
        }
    }
}
