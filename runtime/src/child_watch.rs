//! Sleeping until a child process ends: what the driver's and the nodes' reapers wait on, so that
//! an idle cluster's reapers do not wake. Each child is watched through a pidfd, readable once it
//! ended; a pipe wakes the reaper early (a child started, a deadline moved, shutdown). Where the
//! kernel gives no pidfd (older than 5.3, a sandbox), the reaper looks every [`POLL_EVERY`].

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// How often a reaper looks when some child has no pidfd, or there is no wake-up pipe.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Wakes a reaper sleeping in [`Pidfds::sleep`].
pub(crate) struct Alarm {
    /// The pipe's ends (`None` if it could not be made: the reaper then looks every 20 ms).
    pipe: Option<(OwnedFd, OwnedFd)>,
}

impl Alarm {
    pub(crate) fn new() -> Alarm {
        use rustix::pipe::{PipeFlags, pipe_with};
        Alarm {
            pipe: pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok(),
        }
    }

    /// Wakes the reaper: at once if it sleeps, else right after its current round.
    pub(crate) fn ring(&self) {
        if let Some((_, write)) = &self.pipe {
            // A full pipe means a ring is already pending.
            let _ = rustix::io::write(write, &[1]);
        }
    }
}

/// The pidfds of the children a reaper watches, by pid.
#[derive(Default)]
pub(crate) struct Pidfds(HashMap<u32, Option<OwnedFd>>);

impl Pidfds {
    /// Watches exactly `children` (pids): forgets the others, opens pidfds for the new ones. Only
    /// pass children not yet reaped (waited for), so that each pid is still the child's own.
    pub(crate) fn watch(&mut self, children: impl IntoIterator<Item = u32>) {
        let children: Vec<u32> = children.into_iter().collect();
        self.0.retain(|pid, _| children.contains(pid));
        for pid in children {
            self.0.entry(pid).or_insert_with(|| pidfd(pid));
        }
    }

    /// Sleeps until a watched child ends, `alarm` rings, or `until` passes (never, if `None`).
    pub(crate) fn sleep(&self, alarm: &Alarm, until: Option<Instant>) {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let polling = alarm.pipe.is_none() || self.0.values().any(Option::is_none);
        let timeout = until
            .map(|at| at.saturating_duration_since(Instant::now()))
            .into_iter()
            .chain(polling.then_some(POLL_EVERY))
            .min()
            // Too far off to say (never, in practice): no timeout.
            .and_then(|t| Timespec::try_from(t).ok());
        let mut fds: Vec<PollFd<'_>> = alarm
            .pipe
            .iter()
            .map(|(read, _)| read)
            .chain(self.0.values().flatten())
            .map(|fd| PollFd::new(fd, PollFlags::IN))
            .collect();
        // An error (EINTR) only ends the sleep early.
        let _ = poll(&mut fds, timeout.as_ref());
        if let Some((read, _)) = &alarm.pipe {
            let mut drain = [0u8; 64];
            while matches!(rustix::io::read(read, &mut drain), Ok(n) if n > 0) {}
        }
    }
}

/// A pidfd for process `pid`, or `None` where the kernel gives none.
fn pidfd(pid: u32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_sleep_ends_when_a_child_ends_when_rung_or_at_its_deadline() {
        let alarm = Alarm::new();
        let mut pidfds = Pidfds::default();
        let mut child = Command::new("sleep").arg("0.2").spawn().unwrap();
        pidfds.watch([child.id()]);
        let started = Instant::now();
        pidfds.sleep(&alarm, Some(started + Duration::from_secs(10)));
        assert!(
            child.try_wait().unwrap().is_some(),
            "woken before the child ended"
        );
        let slept = started.elapsed();
        assert!(slept >= Duration::from_millis(150), "{slept:?}");
        assert!(
            slept < Duration::from_secs(5),
            "not woken by the child's end: {slept:?}"
        );

        // A ring before the sleep is not lost: the sleep returns at once.
        pidfds.watch([]);
        alarm.ring();
        alarm.ring();
        let started = Instant::now();
        pidfds.sleep(&alarm, Some(started + Duration::from_secs(10)));
        assert!(started.elapsed() < Duration::from_secs(5));
        // Drained: the next sleep lasts until its deadline.
        let started = Instant::now();
        pidfds.sleep(&alarm, Some(started + Duration::from_millis(100)));
        assert!(started.elapsed() >= Duration::from_millis(100));

        // Rung from another thread while asleep.
        let alarm = std::sync::Arc::new(alarm);
        let ringing = std::sync::Arc::clone(&alarm);
        let ringer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            ringing.ring();
        });
        let started = Instant::now();
        pidfds.sleep(&alarm, Some(started + Duration::from_secs(10)));
        let slept = started.elapsed();
        assert!(
            slept < Duration::from_secs(5),
            "not woken by the ring: {slept:?}"
        );
        ringer.join().unwrap();
    }
}
