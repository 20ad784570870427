//! `wsi serve`: the WebSocket protocol (DESIGN.md §5) over axum, natively.
//!
//! - `scheduler.rs`: the engine's own thread and the order requests run in
//! - `connection.rs`: one WebSocket, through the protocol's session state machine
//! - `files.rs`: the demo page and its files
//!
//! Routes: `/generate` (WebSocket), everything else a file of the `www` folder.

mod connection;
mod files;
mod scheduler;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::Uri;
use axum::response::Response;
use axum::routing::get;

pub use connection::serve_socket;
pub use scheduler::{JobEvent, Scheduler, TURN_TOKENS};

use crate::protocol::MAX_FRAME_BYTES;

/// What the routes share.
#[derive(Clone)]
struct App {
    scheduler: Arc<Scheduler>,
    www: Arc<PathBuf>,
}

/// The server's routes over `scheduler`, with files from `www`.
pub fn router(scheduler: Arc<Scheduler>, www: PathBuf) -> Router {
    Router::new().route("/generate", get(upgrade)).fallback(get(file)).with_state(App { scheduler, www: Arc::new(www) })
}

async fn upgrade(State(app): State<App>, ws: WebSocketUpgrade) -> Response {
    // The transport accepts frames well past the protocol's limit, so that an oversized
    // frame gets a protocol error naming the limit instead of a dropped connection.
    ws.max_message_size(MAX_FRAME_BYTES * 16)
        .max_frame_size(MAX_FRAME_BYTES * 16)
        .on_upgrade(move |socket| async move { serve_socket(socket, &app.scheduler).await })
}

async fn file(State(app): State<App>, uri: Uri) -> Response {
    files::serve_file(&app.www, &uri).await
}

/// Serves on `listener` until the process ends.
pub async fn run(listener: tokio::net::TcpListener, scheduler: Arc<Scheduler>, www: PathBuf) -> std::io::Result<()> {
    axum::serve(listener, router(scheduler, www)).await
}

/// Whether `addr` can only be reached from this machine.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}
