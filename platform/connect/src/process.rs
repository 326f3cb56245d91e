//! What every connector's process does the same way: its environment, SIGTERM, the clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_: libc::c_int) {
    TERMINATE.store(true, Ordering::SeqCst);
}

/// From now on SIGTERM only asks the connector to finish what it is doing and exit.
pub fn stop_on_sigterm() {
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGTERM, on_terminate as *const () as libc::sighandler_t) };
}

/// Whether SIGTERM came.
pub fn terminating() -> bool {
    TERMINATE.load(Ordering::SeqCst)
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

/// A variable the connector cannot run without.
pub fn var(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}
