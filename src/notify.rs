//! systemd readiness protocol (`sd_notify`): READY, RELOADING, STOPPING, STATUS and the
//! watchdog. Every call is a no-op when `NOTIFY_SOCKET` is unset (not under systemd, or a unit
//! that is not `Type=notify`); a failed send is logged once at debug and otherwise ignored: the
//! proxy's job does not depend on its supervisor hearing from it.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::debug;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "sd_notify failed");
    }
}

/// Every route listens and the admin server is up (also the end of a reload).
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload starts (systemd wants the monotonic time with it).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading the configuration"),
        ]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Draining starts.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("shutting down: draining sessions"),
    ]);
}

/// A short status text (`systemctl status` shows it).
pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// The interval at which to send `WATCHDOG=1`: half of `WATCHDOG_USEC` (when it is set for
/// this process).
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}

/// Sends `WATCHDOG=1` every `interval` until `stop`. Runs on the control runtime (the
/// watchers'), so a stuck control runtime stops the pings and systemd restarts the process.
pub async fn watchdog(interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => send(&[NotifyState::Watchdog]),
        }
    }
}
