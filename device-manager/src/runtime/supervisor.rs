//! Supervision of the running app: waits on the child (no timer while it runs), and after a
//! crash holds the restart deadline of an exponential backoff (1 s, 2 s, 4 s, … capped). The
//! backoff starts over once an instance has stayed up for the cap (or a minute, if longer).

use super::app::RunningApp;
use std::process::ExitStatus;
use std::time::Duration;
use tokio::time::Instant;

const FIRST_DELAY: Duration = Duration::from_secs(1);
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// Exponential restart delays.
#[derive(Debug, Clone)]
pub struct Backoff {
    cap: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(cap: Duration) -> Backoff {
        Backoff { cap, failures: 0 }
    }

    /// The delay before restarting an instance that ran for `uptime` and crashed.
    pub fn next_delay(&mut self, uptime: Duration) -> Duration {
        if uptime >= self.cap.max(STABLE_AFTER) {
            self.failures = 0;
        }
        let factor = 1u32.checked_shl(self.failures.min(16)).unwrap_or(u32::MAX);
        self.failures = self.failures.saturating_add(1);
        FIRST_DELAY.saturating_mul(factor).min(self.cap)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// What woke the supervisor.
pub enum Event {
    /// The app's leader exited.
    Exited(ExitStatus),
    /// The backoff after a crash has passed: start the app again.
    RestartDue,
}

/// The app instance (if any) and the pending restart (if any).
pub struct Supervisor {
    pub app: Option<RunningApp>,
    pub restart_at: Option<Instant>,
    pub restarts: u32,
    pub backoff: Backoff,
}

impl Supervisor {
    pub fn new(cap: Duration) -> Supervisor {
        Supervisor {
            app: None,
            restart_at: None,
            restarts: 0,
            backoff: Backoff::new(cap),
        }
    }

    /// Waits for the next event; pending forever when nothing runs and no restart is due.
    pub async fn next_event(&mut self) -> Event {
        if let Some(app) = self.app.as_mut() {
            return Event::Exited(app.wait().await);
        }
        match self.restart_at {
            Some(at) => {
                tokio::time::sleep_until(at).await;
                self.restart_at = None;
                Event::RestartDue
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(5));
        let short = Duration::from_millis(10);
        let delays: Vec<u64> = (0..5).map(|_| b.next_delay(short).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 5, 5]);
        assert_eq!(b.next_delay(Duration::from_secs(120)).as_secs(), 1);
    }
}
