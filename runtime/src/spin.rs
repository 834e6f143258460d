//! Reading a connection's next message by spinning briefly before a blocking read.
//!
//! A blocking read that finds nothing puts its thread to sleep, and the bytes that arrive then must
//! wake it. On an otherwise idle machine that wake-up costs more than everything else a short round
//! trip does (tens of µs on a virtual machine whose idle cores halt), and a sequential round trip
//! pays it at every hop. So the reader of a connection that carried something in the last
//! [`SPIN_BEFORE_READ`] watches it, yielding the core between looks, before it sleeps in `read`: the
//! next message of a busy conversation finds it awake. An idle connection is not watched at all, so an
//! idle cluster burns no CPU; a busy one mostly finds its bytes already there.

use crate::wire::{Conn, FrameReader};
use rustix::io::Errno;
use rustix::net::RecvFlags;
use serde::Deserialize;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
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
        if !reader.has_buffered() {
            let deadline = self.epoch
                + Duration::from_nanos(self.last.load(Ordering::Relaxed))
                + SPIN_BEFORE_READ;
            if Instant::now() < deadline {
                until_readable(reader.stream(), deadline);
            }
        }
        let message = reader.read();
        self.note();
        message
    }
}

/// Spins (yielding) until `stream` has bytes, its end or an error to read, or `deadline` passes.
/// Nothing is consumed: a peek, which never blocks.
fn until_readable(stream: &Conn, deadline: Instant) {
    let mut probe = [0u8; 1];
    loop {
        match rustix::net::recv(
            stream,
            &mut probe[..],
            RecvFlags::PEEK | RecvFlags::DONTWAIT,
        ) {
            Err(Errno::AGAIN | Errno::INTR) => {}
            // Bytes, the end, or an error that the read reports.
            _ => return,
        }
        if Instant::now() >= deadline {
            return;
        }
        std::thread::yield_now();
    }
}
