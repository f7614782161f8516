//! The client side: the accept loop of each route ([`listener`]) and the sessions it spawns
//! ([`session`]): hold until a verified master exists, connect, splice, end with the epoch.

pub mod busy_poll;
pub mod listener;
pub mod session;
#[cfg(target_os = "linux")]
mod uring;
pub mod workers;
pub mod zerocopy;

use tokio_util::sync::CancellationToken;

/// The two stages of shutdown every client task watches.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Stop accepting and release held clients; sessions may finish.
    pub drain: CancellationToken,
    /// The grace period is over: close every session now.
    pub close: CancellationToken,
}
