//! A worker's standard output and error, forwarded to its driver line by line and printed there
//! with the worker's name in front, as Ray does: `(worker 2 pid=4242 node=1f0c…) hello`, or the
//! actor's type for an actor's process. It holds for embedded workers and for those a standing
//! cluster's nodes run on other machines alike (their lines would otherwise end in the node's log).
//!
//! The worker points its file descriptors 1 and 2 at pipes, so everything written there — by task
//! code, panics, libraries, programs a task starts — is read by a thread that sends whole lines to
//! the driver over the worker's connection; once that connection is gone, to where the worker's
//! output went before.

use crate::wire::{Outbox, ToDriver};
use std::io::{BufRead, BufReader, Write};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The actor this worker hosts, once created: its lines are named after it.
static ACTOR: OnceLock<String> = OnceLock::new();

/// Names this worker's lines after the actor it hosts (its type's Rust path).
pub(crate) fn hosting_actor(class: &str) {
    let _ = ACTOR.set(class.to_owned());
}

/// The readers of this worker's forwarded output, while it forwards.
static READERS: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());

/// Points this process's standard output and error at pipes whose lines go to the driver through
/// `outbox`, prefixed with `(worker <id> pid=<pid> node=<node>)`. [`finish`] sends what is left.
pub(crate) fn forward(outbox: &Outbox<ToDriver>, worker: u32, node: &str) -> std::io::Result<()> {
    let pid = std::process::id();
    let mut readers = READERS.lock().unwrap_or_else(|p| p.into_inner());
    for stderr in [false, true] {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        // Flush what Rust buffered for the old descriptor before it is replaced; keep the old one
        // for when the driver is gone.
        let original = if stderr {
            let _ = std::io::stderr().flush();
            let original = rustix::io::fcntl_dupfd_cloexec(std::io::stderr(), 3)?;
            rustix::stdio::dup2_stderr(&write)?;
            original
        } else {
            let _ = std::io::stdout().flush();
            let original = rustix::io::fcntl_dupfd_cloexec(std::io::stdout(), 3)?;
            rustix::stdio::dup2_stdout(&write)?;
            original
        };
        drop(write);
        let mut original = std::fs::File::from(original);
        let outbox = outbox.clone();
        let node = node.to_owned();
        readers.push(
            std::thread::Builder::new()
                .name("filament-output".into())
                .spawn(move || {
                    let mut lines = BufReader::new(std::fs::File::from(read));
                    let mut line = Vec::new();
                    while matches!(lines.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                        let who = match ACTOR.get() {
                            Some(class) => class.clone(),
                            None => format!("worker {worker}"),
                        };
                        let text = String::from_utf8_lossy(&line);
                        let text = text.strip_suffix('\n').unwrap_or(&text);
                        let line_out = format!("({who} pid={pid} node={node}) {text}");
                        if !outbox.send(ToDriver::Output {
                            stderr,
                            line: line_out.clone(),
                        }) {
                            let _ = writeln!(original, "{line_out}");
                        }
                        line.clear();
                    }
                })?,
        );
    }
    Ok(())
}

/// Closes this process's ends of the pipes (standard output and error go to `/dev/null` from now
/// on) and waits, a moment at most, for the readers to send the last lines. Called before the
/// worker exits, however it exits.
pub(crate) fn finish() {
    let readers = std::mem::take(&mut *READERS.lock().unwrap_or_else(|p| p.into_inner()));
    if readers.is_empty() {
        return;
    }
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    if let Ok(null) = std::fs::File::options().write(true).open("/dev/null") {
        let _ = rustix::stdio::dup2_stdout(&null);
        let _ = rustix::stdio::dup2_stderr(&null);
    }
    // A program a task started may still hold the pipes: do not wait for it.
    let deadline = Instant::now() + Duration::from_secs(1);
    for reader in readers {
        while !reader.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if reader.is_finished() {
            let _ = reader.join();
        }
    }
}
