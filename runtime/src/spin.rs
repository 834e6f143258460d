//! Reading a connection's next message by spinning briefly before a blocking read.
//!
//! A blocking read that finds nothing puts its thread to sleep, and the bytes that arrive then must
//! wake it. On an otherwise idle machine that wake-up costs more than everything else a short round
//! trip does (tens of µs on a virtual machine whose idle cores halt), and a sequential round trip
//! pays it at every hop. So the reader of a connection that carried something in the last
//! [`SPIN_BEFORE_READ`] watches it, yielding the core between looks, before it sleeps in `read`: the
//! next message of a busy conversation finds it awake. An idle connection is not watched at all, so an
//! idle cluster burns no CPU; a busy one mostly finds its bytes already there.
//!
//! For the same reason, threads that share a connection's reading end take turns without waking
//! each other while it is busy ([`Turns`], a worker's connection; the driver's is in
//! `driver::conn`).

use crate::wire::{Conn, FrameReader};
use rustix::io::Errno;
use rustix::net::RecvFlags;
use serde::Deserialize;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long after a connection's last activity its reader spins before sleeping: longer than a
/// traced sequential round trip (20–50 µs on two cores), short enough not to matter to an idle
/// machine.
pub(crate) const SPIN_BEFORE_READ: Duration = Duration::from_micros(100);

/// When a connection last carried something, shared by the threads that read it and the threads
/// that answer on it.
#[derive(Debug)]
pub(crate) struct Activity {
    epoch: Instant,
    /// Nanoseconds from `epoch` to the last activity.
    last: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Activity {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// How long since the connection last carried something.
    pub(crate) fn quiet_for(&self) -> Duration {
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_nanos(self.last.load(Ordering::Relaxed)))
    }

    /// Something just happened on the connection: a message came, or an answer went out (whose
    /// reply is then due soon).
    pub(crate) fn note(&self) {
        let nanos = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.fetch_max(nanos, Ordering::Relaxed);
    }

    /// The next message of `reader`, as [`FrameReader::read`]; spins first if the connection was
    /// active within [`SPIN_BEFORE_READ`] and nothing is buffered.
    pub(crate) fn read<T: for<'de> Deserialize<'de>>(
        &self,
        reader: &mut FrameReader,
    ) -> io::Result<Option<T>> {
        self.until_readable(reader, || false);
        self.read_now(reader)
    }

    /// Spins (yielding) while the connection was active within [`SPIN_BEFORE_READ`], until
    /// `reader` has something to read; returns `false`, without waiting further, as soon as
    /// `give_way` says another thread wants to read (and nothing is there yet). `true`: read now
    /// (a blocking read if the spin ran out).
    pub(crate) fn until_readable(&self, reader: &FrameReader, give_way: impl Fn() -> bool) -> bool {
        if reader.has_buffered() {
            return true;
        }
        let deadline =
            self.epoch + Duration::from_nanos(self.last.load(Ordering::Relaxed)) + SPIN_BEFORE_READ;
        while Instant::now() < deadline {
            if readable(reader.stream()) {
                return true;
            }
            if give_way() {
                return false;
            }
            std::thread::yield_now();
        }
        true
    }

    /// The next message of `reader`, read now (blocking until it is whole), as activity.
    pub(crate) fn read_now<T: for<'de> Deserialize<'de>>(
        &self,
        reader: &mut FrameReader,
    ) -> io::Result<Option<T>> {
        let message = reader.read();
        self.note();
        message
    }
}

/// Whether `stream` has bytes, its end or an error to read now. Nothing is consumed: a peek,
/// which never blocks.
pub(crate) fn readable(stream: &Conn) -> bool {
    let mut probe = [0u8; 1];
    // Bytes, the end, or an error that the read reports.
    !matches!(
        rustix::net::recv(
            stream,
            &mut probe[..],
            RecvFlags::PEEK | RecvFlags::DONTWAIT
        ),
        Err(Errno::AGAIN | Errno::INTR)
    )
}

/// How often a thread waiting for its turn to read a busy connection looks whether it is free.
const LOOK_EVERY: Duration = Duration::from_millis(1);

/// After how long without a message a connection counts as quiet: threads waiting for their turn
/// to read it sleep until woken instead of looking every [`LOOK_EVERY`].
const QUIET_AFTER: Duration = Duration::from_millis(10);

/// A connection's reading end, which threads take in turns: the one holding it reads a message
/// and, if it is a task, lets go of it and runs the task itself (no hand-off between a reader and
/// an executor). Letting go wakes nobody while the connection is busy: a wake-up per task costs
/// more than a short task (on two cores, a sequential call took 20–35 µs with one, 10–17 without),
/// and the thread that ran it mostly comes back for the next message before anyone else would.
/// So a waiting thread looks again every [`LOOK_EVERY`] (what arrives while a long task starts
/// waits at most that long), and once the connection is quiet it sleeps until woken: an idle
/// process burns nothing.
pub(crate) struct Turns {
    reader: Mutex<FrameReader>,
    /// Threads waiting for their turn.
    waiting: Mutex<Vec<Thread>>,
    /// Of which those asleep until woken (the connection was quiet).
    sleepers: AtomicUsize,
}

impl Turns {
    pub(crate) fn new(reader: FrameReader) -> Self {
        Turns {
            reader: Mutex::new(reader),
            waiting: Mutex::new(Vec::new()),
            sleepers: AtomicUsize::new(0),
        }
    }

    fn try_take(&self) -> Option<MutexGuard<'_, FrameReader>> {
        match self.reader.try_lock() {
            Ok(reader) => Some(reader),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    fn waiting(&self) -> MutexGuard<'_, Vec<Thread>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This thread's turn to read, once the thread holding the reader lets go of it (by dropping
    /// the returned turn).
    pub(crate) fn take(&self, activity: &Activity) -> Turn<'_> {
        loop {
            if let Some(reader) = self.try_take() {
                return Turn {
                    turns: self,
                    reader: Some(reader),
                };
            }
            let me = std::thread::current();
            let asleep = activity.quiet_for() >= QUIET_AFTER;
            self.waiting().push(me.clone());
            if asleep {
                self.sleepers.fetch_add(1, Ordering::SeqCst);
            }
            fence(Ordering::SeqCst);
            // Looked at again once registered: a reader let go of meanwhile is not missed (its
            // holder counts the sleepers after letting go).
            let reader = self.try_take();
            if reader.is_none() {
                if asleep {
                    std::thread::park();
                } else {
                    std::thread::park_timeout(LOOK_EVERY);
                }
            }
            if asleep {
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
            self.waiting().retain(|t| t.id() != me.id());
            if reader.is_some() {
                return Turn {
                    turns: self,
                    reader,
                };
            }
        }
    }

    /// Wakes every thread waiting for its turn: something must be read now (the answer a task
    /// blocked in `get` waits for).
    pub(crate) fn wake_all(&self) {
        for thread in self.waiting().iter() {
            thread.unpark();
        }
    }
}

/// A thread's turn to read (see [`Turns`]); dropping it lets go of the reader, and wakes the
/// threads asleep waiting for it, if any.
pub(crate) struct Turn<'a> {
    turns: &'a Turns,
    reader: Option<MutexGuard<'a, FrameReader>>,
}

impl std::ops::Deref for Turn<'_> {
    type Target = FrameReader;
    fn deref(&self) -> &FrameReader {
        self.reader.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Turn<'_> {
    fn deref_mut(&mut self) -> &mut FrameReader {
        self.reader.as_mut().expect("held until dropped")
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.reader.take());
        fence(Ordering::SeqCst);
        if self.turns.sleepers.load(Ordering::SeqCst) > 0 {
            self.turns.wake_all();
        }
    }
}
