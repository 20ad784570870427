//! One WebSocket connection of `wsi serve`: frames go through the protocol [`Session`];
//! its actions become frames to the peer and requests to the [`Scheduler`].

use axum::extract::ws::{Message, WebSocket};
use tokio::sync::mpsc::unbounded_channel;

use super::scheduler::{JobEvent, Scheduler};
use crate::protocol::{Action, RequestDefaults, Session};

/// Serves the protocol on `socket` until the peer closes it. A request still running
/// then is cancelled (it stops within one token and its state is freed).
pub async fn serve_socket(mut socket: WebSocket, scheduler: &Scheduler) {
    let mut session = Session::new(RequestDefaults::default());
    let (events_tx, mut events) = unbounded_channel::<JobEvent>();
    let mut current: Option<u64> = None;
    loop {
        let actions = tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(text))) => session.on_frame(text.as_str()),
                Some(Ok(Message::Binary(bytes))) => session.on_binary(bytes.len()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                // Closed, or a transport error (e.g. a frame past the transport's limit).
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
            },
            Some(event) = events.recv() => match event {
                JobEvent::Started(info) => session.on_started(info),
                JobEvent::Token { text, id } => session.on_token(&text, id),
                JobEvent::Paused => session.on_paused(),
                JobEvent::Finished(end) => {
                    current = None;
                    session.on_finished(end)
                }
                JobEvent::Failed(e) => {
                    current = None;
                    session.on_failed(&e)
                }
            },
        };
        for action in actions {
            match action {
                Action::Send(frame) => {
                    if socket.send(Message::Text(frame.to_text().into())).await.is_err() {
                        break;
                    }
                }
                Action::Start(req) => current = Some(scheduler.submit(req, events_tx.clone())),
                Action::Control(c) => {
                    if let Some(id) = current {
                        scheduler.control(id, c);
                    }
                }
            }
        }
    }
    session.on_close();
    if let Some(id) = current {
        scheduler.cancel(id);
    }
}
