//! The service manager's readiness protocol (sd_notify(3)) for the unit's `Type=notify`:
//! `READY=1` once every listener is bound and the spool recovered (so `systemctl start`
//! returns when mail can be taken, and units ordered after the relay start then),
//! `RELOADING=1` then `READY=1` around a SIGHUP reload, `STOPPING=1` when the drain
//! starts, and a `STATUS=` line `systemctl status` shows. Without `NOTIFY_SOCKET` (not
//! started by systemd) every call does nothing.

use sd_notify::NotifyState;

/// The relay takes mail now.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload starts; [`ready`] ends it (also when the new config was refused: the running
/// one stays in effect). `MONOTONIC_USEC` is what `Type=notify-reload` managers expect.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// The drain starts (SIGTERM/SIGINT).
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// A status line alone (why the start failed, before the process exits).
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        // The service manager times the start out on its own; the log says why.
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}
