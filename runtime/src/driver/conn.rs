//! The driver's side of its workers' connections: accepting them, the handshake (token, protocol,
//! registry fingerprint, TLS), and each worker's messages, fed to the scheduler, until it goes away.

use super::{Driver, Launcher, State};
use crate::WorkerStartError;
use crate::cluster::proto::ProcessStatus;
use crate::registry::registry;
use crate::spin::Activity;
use crate::status::{HookState, ProcessKind, ProcessTracing};
use crate::wire::{self, Conn, FrameReader, Outbox, ToDriver, ToWorker};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread::Thread;
use std::time::{Duration, Instant};

pub(super) enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    pub(super) fn accept(&self) -> std::io::Result<Conn> {
        match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| Conn::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| Conn::tcp(s)),
        }
    }
}

impl Driver {
    pub(super) fn accept_loop(self: Arc<Self>, listener: Listener) {
        loop {
            let stream = match listener.accept() {
                Ok(stream) => stream,
                Err(e) => {
                    // Out of file descriptors, say: not a reason to spin.
                    eprintln!("filament: accepting a worker's connection failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if self.lock().sched.shutting_down {
                return;
            }
            let driver = Arc::clone(&self);
            if let Err(e) = std::thread::Builder::new()
                .name("filament-worker-conn".into())
                .spawn(move || driver.serve_worker(stream))
            {
                eprintln!("filament: no thread for a worker's connection: {e}");
            }
        }
    }

    /// Handshake, then the worker's messages until it goes away.
    pub(super) fn serve_worker(self: Arc<Self>, stream: Conn) {
        let _ = stream.set_read_timeout(Some(self.start_timeout));
        let stream = match (&self.launcher, stream) {
            (Launcher::Cluster { tls: Some(tls), .. }, Conn::Tcp(raw)) => {
                use crate::cluster::tls::{Accepted, refuse_plain};
                let peer = raw
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "an unknown peer".to_owned());
                match tls.accept(raw) {
                    Accepted::Tls(stream) => Conn::tls(*stream),
                    Accepted::Plain(raw) => {
                        let why = "this job's cluster requires TLS: a plain-TCP worker is refused";
                        eprintln!("filament: refused a connection from {peer}: {why}");
                        refuse_plain(raw, &ToWorker::Refused(why.into()));
                        return;
                    }
                    Accepted::Failed(e) => {
                        eprintln!(
                            "filament: refused a connection from {peer}: TLS handshake failed: {e}"
                        );
                        return;
                    }
                }
            }
            (_, stream) => stream,
        };
        let Ok(write_half) = stream.try_clone() else {
            return;
        };
        let mut reader = FrameReader::new(stream);
        let (worker, pid) = match reader.read::<ToDriver>() {
            Ok(Some(ToDriver::Hello {
                magic,
                protocol,
                fingerprint,
                token,
                worker,
                pid,
            })) => {
                let (Launcher::Cluster { token: ours, .. } | Launcher::Local { token: ours, .. }) =
                    &self.launcher;
                let wrong_token = !crate::cluster::same_token(&token, ours);
                let refusal = if magic != wire::MAGIC {
                    Some("not a Filament worker".to_owned())
                } else if protocol != wire::PROTOCOL_VERSION {
                    Some(format!(
                        "protocol version {protocol}, the driver speaks {}",
                        wire::PROTOCOL_VERSION
                    ))
                } else if wrong_token {
                    eprintln!(
                        "filament: refused a connection from {}: wrong or missing cluster token",
                        write_half.peer()
                    );
                    Some("wrong or missing cluster token".to_owned())
                } else if fingerprint != registry().fingerprint {
                    Some("its remote functions and actors differ from the driver's: a different binary".to_owned())
                } else {
                    None
                };
                if let Some(reason) = refusal {
                    let _ = wire::write_message(&write_half, &ToWorker::Refused(reason.clone()));
                    if wrong_token {
                        // Not one of this job's workers: nothing waits for it.
                        return;
                    }
                    self.worker_start_failed(
                        worker,
                        WorkerStartError::Refused {
                            worker,
                            pid,
                            reason,
                        },
                    );
                    return;
                }
                (worker, pid)
            }
            Ok(None) => return,
            other => {
                if matches!(write_half, Conn::Tcp(_)) {
                    let why = match other {
                        Err(e) => e.to_string(),
                        _ => "its first message was not a hello".to_owned(),
                    };
                    eprintln!(
                        "filament: refused a connection from {}: no Filament hello ({why})",
                        write_half.peer()
                    );
                }
                return;
            }
        };
        reader.trust();
        let outbox = Outbox::new(write_half);
        outbox.send(ToWorker::Welcome {
            job: self.welcome.clone(),
            cluster: self.cluster,
        });
        // What the worker prints while its hook runs comes before the hook's status.
        let status = loop {
            match reader.read::<ToDriver>() {
                Ok(Some(ToDriver::Output { stderr, line })) => {
                    let mut state = self.lock();
                    state.output.push((stderr, line));
                    self.unlock(state);
                }
                other => break other,
            }
        };
        match status {
            Ok(Some(ToDriver::HookStatus(Ok(())))) => {}
            Ok(Some(ToDriver::HookStatus(Err(message)))) => {
                // Kept for the head's `status`: the job's record shows which process failed, and why.
                self.lock().sched.departed.push(ProcessStatus {
                    worker: Some(worker),
                    pid,
                    kind: ProcessKind::Worker,
                    tracing: ProcessTracing::without_spans(HookState::Failed(message.clone())),
                });
                self.worker_start_failed(
                    worker,
                    WorkerStartError::Hook {
                        worker,
                        pid,
                        message,
                    },
                );
                return;
            }
            other => {
                let why = match other {
                    Err(e) => e.to_string(),
                    _ => "it closed the connection".to_owned(),
                };
                self.worker_start_failed(
                    worker,
                    WorkerStartError::Disconnected {
                        worker,
                        pid,
                        cause: why,
                    },
                );
                return;
            }
        }
        let _ = reader.stream().set_read_timeout(None);
        let reading = Arc::new(Reading {
            plain: !matches!(reader.stream(), Conn::Tls(_)),
            reader: Mutex::new(reader),
            activity: Activity::new(),
            wanted: AtomicU32::new(0),
            ended: AtomicBool::new(false),
            thread: std::thread::current(),
        });
        {
            let mut state = self.lock();
            state.conns.insert(worker, outbox.clone());
            state.readers.insert(worker, Arc::clone(&reading));
            state.starting_since.remove(&worker);
            if state
                .sched
                .worker_ready(worker, pid, self.welcome.hook.is_some())
                .is_none()
            {
                // Given up on (it came too late), or never asked for: what waited for it has
                // failed already.
                state.conns.remove(&worker);
                state.readers.remove(&worker);
                drop(state);
                eprintln!("filament: worker {worker} (pid {pid}) came too late; it is sent away");
                outbox.send(ToWorker::Shutdown);
                return;
            }
            self.unlock(state);
        }

        // The reader spins a moment before sleeping in `read` (see `spin`): in a sequential
        // conversation the worker's next message finds it awake. A thread waiting in `get` for a
        // result from this worker takes over while it spins (see `Driver::read_while_waiting`).
        loop {
            let mut reader = reading.lock_reader();
            if reading.ended.load(Ordering::Acquire) {
                break;
            }
            if !reading
                .activity
                .until_readable(&reader, || reading.wanted.load(Ordering::Acquire) > 0)
            {
                drop(reader);
                // Woken by the waiting thread if it leaves something to read; else it looks
                // again within `GIVEN_WAY`.
                while reading.wanted.load(Ordering::Acquire) > 0 {
                    std::thread::park_timeout(GIVEN_WAY);
                }
                continue;
            }
            if !self.receive(worker, &reading.activity, &mut reader) {
                break;
            }
        }
        self.on_worker_exit(worker, pid);
    }

    /// Reads the worker's next message (blocking until it is whole) and those that came with it,
    /// and hands them to the scheduler under one lock: what they cause is sent in one write per
    /// worker. `false` once the connection ended.
    pub(super) fn receive(
        &self,
        worker: u32,
        activity: &Activity,
        reader: &mut FrameReader,
    ) -> bool {
        let Ok(Some(message)) = activity.read_now::<ToDriver>(reader) else {
            return false;
        };
        let mut state = self.lock();
        Self::on_message(&mut state, worker, message);
        while reader.has_buffered() {
            match reader.read::<ToDriver>() {
                Ok(Some(message)) => Self::on_message(&mut state, worker, message),
                Ok(None) | Err(_) => {
                    self.unlock(state);
                    return false;
                }
            }
        }
        self.unlock(state);
        true
    }

    /// A worker's message, to the scheduler (its output, printed by the shell).
    pub(super) fn on_message(state: &mut State, worker: u32, message: ToDriver) {
        match message {
            ToDriver::Output { stderr, line } => state.output.push((stderr, line)),
            message => state.sched.on_message(worker, message),
        }
    }

    /// A worker went away: the scheduler retries or fails its tasks, and replaces it.
    pub(super) fn on_worker_exit(&self, worker: u32, pid: u32) {
        let mut state = self.lock();
        state.conns.remove(&worker);
        state.readers.remove(&worker);
        state.sched.worker_exited(worker, pid);
        self.unlock(state);
    }
}

/// How long a connection's thread that gave way to a thread waiting in `get` may leave the
/// connection unread once that thread is done with it: what arrives then waits at most this long.
const GIVEN_WAY: Duration = Duration::from_millis(1);

/// A worker connection's reading end, read in turns: by the connection's own thread, and by a
/// thread of the program waiting in `get` for a result this worker will send. That thread then
/// reads the result itself instead of being handed it by the connection's thread: one thread
/// fewer spinning on two cores, and no hand-off on the way from the socket to the caller.
pub(super) struct Reading {
    reader: Mutex<FrameReader>,
    activity: Activity,
    /// Not TLS: a TLS record may carry no message, and a thread in `get` must never block in a
    /// read that might not end (its result may come from another worker).
    plain: bool,
    /// Threads in `get` that want to read: the connection's thread gives way to them.
    wanted: AtomicU32,
    /// A thread in `get` read the connection's end: the connection's thread winds it up.
    ended: AtomicBool,
    /// The connection's thread, woken when a thread in `get` is done with the connection.
    thread: Thread,
}

impl Reading {
    fn lock_reader(&self) -> MutexGuard<'_, FrameReader> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn try_lock_reader(&self) -> Option<MutexGuard<'_, FrameReader>> {
        match self.reader.try_lock() {
            Ok(reader) => Some(reader),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

impl Driver {
    /// Reads `worker`'s connection from a thread waiting in `get` until a task completes (the
    /// completion counter moves from `seen`) or `until`, whichever first, reading only what is
    /// there (never blocking in a read). The connection's thread reads while this one cannot, and
    /// takes over again within [`GIVEN_WAY`], or at once if this thread leaves something to read
    /// or leaves without its result. (Waking it at every `get` would put a third thread spinning
    /// on two cores between a result and the next task: a sequential round trip then takes
    /// 30–45 µs instead of 17–20.)
    pub(super) fn read_while_waiting(
        &self,
        worker: u32,
        reading: &Reading,
        seen: u64,
        until: Instant,
    ) {
        if !reading.plain {
            return;
        }
        let waiting = || self.completions.load(Ordering::Acquire) == seen;
        reading.wanted.fetch_add(1, Ordering::AcqRel);
        let mut hand_back = true;
        while waiting() && Instant::now() < until {
            // The connection's thread lets go of it at its next look, unless asleep in a read.
            if let Some(mut reader) = reading.try_lock_reader() {
                hand_back = self.read_until(worker, reading, &mut reader, waiting, until);
                break;
            }
            std::thread::yield_now();
        }
        reading.wanted.fetch_sub(1, Ordering::AcqRel);
        if hand_back {
            reading.thread.unpark();
        }
    }

    /// [`Driver::read_while_waiting`] holding the reader: reads what is there until nothing is
    /// and `waiting` says the wait is over. Returns whether the connection's thread must take over
    /// at once (the connection ended, or this thread stops without its result).
    fn read_until(
        &self,
        worker: u32,
        reading: &Reading,
        reader: &mut FrameReader,
        waiting: impl Fn() -> bool,
        until: Instant,
    ) -> bool {
        loop {
            if reading.ended.load(Ordering::Acquire) {
                return true;
            }
            if reader.has_buffered() || crate::spin::readable(reader.stream()) {
                if !self.receive(worker, &reading.activity, reader) {
                    reading.ended.store(true, Ordering::Release);
                    return true;
                }
            } else if !waiting() {
                return false;
            } else if Instant::now() >= until {
                return true;
            } else {
                std::thread::yield_now();
            }
        }
    }
}
