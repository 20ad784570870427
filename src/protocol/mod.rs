//! The WebSocket streaming protocol (DESIGN.md §5), independent of the transport:
//!
//! - `messages.rs`: the frames (`config`, `control` in; `init`, `status`, `token`,
//!   `completion`, `error` out), parsed with errors that name the key
//! - `session.rs`: one connection's state machine (idle, generating, paused, closed)
//! - `job.rs`: one request as a generation that pause/resume can cut into several engine
//!   calls with the same output
//!
//! `wsi serve` (native, [`crate::serve`]) and `streamWebsocket` (browser) drive these.

mod job;
mod messages;
mod session;

#[cfg(test)]
mod tests;

pub use job::{DEFAULT_MAX_TOKENS, Finished, Interrupt, Job, SegmentEnd, model_info};
pub use messages::{
    Control, Incoming, MAX_FRAME_BYTES, ModelInfo, Outgoing, Request, RequestDefaults, StreamOptions, Timing, Usage,
};
pub use session::{Action, Phase, Session};
