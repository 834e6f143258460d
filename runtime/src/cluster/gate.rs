//! The head's door for connections that have not proven who they are yet. Each has a few seconds
//! for its hello and token (a silent peer, or one dripping bytes, is cut off at the deadline);
//! at most so many wait at once, from one address and in all, and a newcomer past the limit
//! pushes out the one that has waited longest — a real peer says hello within milliseconds, so
//! strangers holding connections can take neither every file descriptor of the head nor the
//! place of `filament status` and of drivers. Refusals are logged at a bounded rate.

use std::collections::VecDeque;
use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a connection has to present its hello and token.
pub(crate) const HELLO_DEADLINE: Duration = Duration::from_secs(5);
/// Connections waiting to authenticate from one address, at most.
pub(crate) const MAX_WAITING_PER_SOURCE: usize = 32;
/// Connections waiting to authenticate in all, at most.
pub(crate) const MAX_WAITING: usize = 128;
/// Refusals logged per second; the others are counted and summed up once the second is over.
const LOGGED_PER_SECOND: u32 = 5;

const WAITING: u8 = 0;
const DONE: u8 = 1;

/// The door, one per head.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    state: Mutex<GateState>,
    /// Rung when a connection is let in or a refusal goes unlogged: the gate's thread sleeps
    /// until the next deadline.
    wake: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    /// Connections waiting to authenticate, oldest first.
    waiting: VecDeque<Waiting>,
    log: RateLimit,
}

#[derive(Debug)]
struct Waiting {
    since: Instant,
    source: IpAddr,
    stream: TcpStream,
    state: Arc<AtomicU8>,
}

#[derive(Debug, Default)]
struct RateLimit {
    window: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// A connection let in and not yet authenticated; [`Pass::authenticated`] (or dropping it) ends
/// its wait.
#[derive(Debug)]
pub(crate) struct Pass {
    state: Arc<AtomicU8>,
}

impl Gate {
    /// Starts the thread that cuts off connections whose hello is late. It sleeps until the
    /// oldest waiting connection's deadline (or the end of a second whose refusals were not all
    /// logged), and for good when none waits: an idle head does not wake.
    pub(crate) fn start(self: &Arc<Self>) -> std::io::Result<()> {
        let gate = Arc::clone(self);
        std::thread::Builder::new()
            .name("filament-head-gate".into())
            .spawn(move || {
                loop {
                    let mut state = gate.lock();
                    loop {
                        let Some(at) = state.next_deadline() else {
                            state = gate.wait(state, None);
                            continue;
                        };
                        let left = at.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        state = gate.wait(state, Some(left));
                    }
                    drop(state);
                    gate.cut_off_late();
                }
            })
            .map(drop)
    }

    fn wait<'a>(
        &self,
        state: std::sync::MutexGuard<'a, GateState>,
        timeout: Option<Duration>,
    ) -> std::sync::MutexGuard<'a, GateState> {
        match timeout {
            Some(timeout) => {
                self.wake
                    .wait_timeout(state, timeout)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => self.wake.wait(state).unwrap_or_else(|p| p.into_inner()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets `stream` in to say hello, pushing out the longest-waiting connection of its address
    /// (or of all) if too many wait already.
    pub(crate) fn admit(&self, stream: &TcpStream) -> Option<Pass> {
        let source = stream.peer_addr().ok()?.ip();
        let watched = stream.try_clone().ok()?;
        let mut state = self.lock();
        state.forget_done();
        let from_source = state.waiting.iter().filter(|w| w.source == source).count();
        let pushed_out = if from_source >= MAX_WAITING_PER_SOURCE {
            state.waiting.iter().position(|w| w.source == source)
        } else if state.waiting.len() >= MAX_WAITING {
            Some(0)
        } else {
            None
        };
        if let Some(oldest) = pushed_out.and_then(|index| state.waiting.remove(index)) {
            let message = format!(
                "cut off a connection from {} that sent no hello in {:?}: too many connections wait to authenticate",
                oldest.source,
                oldest.since.elapsed()
            );
            oldest.cut_off();
            state.log.log(&message);
        }
        let pass = Arc::new(AtomicU8::new(WAITING));
        state.waiting.push_back(Waiting {
            since: Instant::now(),
            source,
            stream: watched,
            state: Arc::clone(&pass),
        });
        drop(state);
        self.wake.notify_one();
        Some(Pass { state: pass })
    }

    /// Logs a refusal, at most a few a second.
    pub(crate) fn log_refusal(&self, message: &str) {
        let mut state = self.lock();
        state.log.log(message);
        let unlogged = state.log.suppressed > 0;
        drop(state);
        // The gate sums them up once the second is over.
        if unlogged {
            self.wake.notify_one();
        }
    }

    fn cut_off_late(&self) {
        let mut state = self.lock();
        state.log.tick();
        state.forget_done();
        let mut late = 0;
        while state
            .waiting
            .front()
            .is_some_and(|w| w.since.elapsed() >= HELLO_DEADLINE)
        {
            if let Some(waiting) = state.waiting.pop_front() {
                waiting.cut_off();
                late += 1;
            }
        }
        if late > 0 {
            state.log.log(&format!(
                "cut off {late} connection(s) that sent no hello within {HELLO_DEADLINE:?}"
            ));
        }
    }
}

impl GateState {
    /// When the gate has something to do: the oldest waiting connection's deadline, or the end
    /// of a second whose refusals were not all logged. `None`: nothing until a connection comes.
    fn next_deadline(&mut self) -> Option<Instant> {
        self.forget_done();
        let hello = self.waiting.front().map(|w| w.since + HELLO_DEADLINE);
        let summary = self
            .log
            .window
            .filter(|_| self.log.suppressed > 0)
            .map(|start| start + Duration::from_secs(1));
        hello.into_iter().chain(summary).min()
    }

    /// Drops the connections that authenticated or went away.
    fn forget_done(&mut self) {
        self.waiting
            .retain(|w| w.state.load(Ordering::Acquire) == WAITING);
    }
}

impl Waiting {
    /// Ends the connection: the thread serving it sees its read fail.
    fn cut_off(self) {
        self.state.store(DONE, Ordering::Release);
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

impl Pass {
    /// The peer proved who it is: it no longer counts among the waiting.
    pub(crate) fn authenticated(self) {
        drop(self);
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.state.store(DONE, Ordering::Release);
    }
}

impl RateLimit {
    /// Ends the current second if it is over, saying how many lines it did not log.
    fn tick(&mut self) {
        let now = Instant::now();
        if self
            .window
            .is_none_or(|start| now.duration_since(start) >= Duration::from_secs(1))
        {
            if self.suppressed > 0 {
                super::log(&format!(
                    "{} more refusals in the last second were not logged",
                    self.suppressed
                ));
            }
            self.window = Some(now);
            self.logged = 0;
            self.suppressed = 0;
        }
    }

    fn log(&mut self, message: &str) {
        self.tick();
        if self.logged < LOGGED_PER_SECOND {
            self.logged += 1;
            super::log(message);
        } else {
            self.suppressed += 1;
        }
    }
}
