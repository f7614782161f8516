//! Discovery: per route, a watcher ([`watcher`]) polls every sentinel and listens to each one's
//! failover events ([`subscription`]); the trust rules ([`decide`], [`evidence`], ranking in
//! [`arbiter`]) are pure functions of what the sentinels said; [`client`] owns the connections
//! (TLS, AUTH, size bounds) and turns failures into typed errors. The watcher is the only
//! writer of the route's master state: it fences on evidence of demotion and installs the next
//! master only after `ROLE` says master.

pub mod arbiter;
pub mod client;
pub mod decide;
pub mod evidence;
pub mod subscription;
pub mod watcher;

use std::time::Duration;

pub use watcher::watch;

/// Longest pause between reconnect attempts to a failing sentinel (polls and subscriptions).
const MAX_BACKOFF: Duration = Duration::from_secs(5);
