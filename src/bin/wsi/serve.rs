//! `wsi serve`: the engine on its scheduler thread, axum on a tokio runtime.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use wsi::engine::Engine;
use wsi::error::{Error, Result};
use wsi::serve::{Scheduler, is_loopback};

pub fn run(engine: Engine, host: &str, port: u16, www: &Path) -> Result<()> {
    let scheduler = Arc::new(Scheduler::start(engine)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((host, port))
            .await
            .map_err(|e| Error::invalid(format!("cannot listen on {host}:{port}: {e}")))?;
        let addr: SocketAddr = listener.local_addr().map_err(|e| Error::internal(e.to_string()))?;
        if !is_loopback(&addr) {
            eprintln!("wsi serve: listening on {addr}, which other machines can reach");
        }
        if !www.join("index.html").is_file() {
            eprintln!("wsi serve: {} has no index.html; only /generate is useful", www.display());
        }
        let info = scheduler.model_info();
        // One line on stdout that scripts can read the address from.
        println!(
            "wsi serve: {} ({}, context {}) on ws://{addr}/generate, demo http://{addr}/",
            info.name, info.quantization, info.context_length
        );
        wsi::serve::run(listener, scheduler.clone(), www.to_path_buf())
            .await
            .map_err(|e| Error::internal(format!("server stopped: {e}")))
    })
}
