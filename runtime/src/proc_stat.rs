//! Reading a process's `/proc/<pid>/stat`.

/// Process `pid`'s `/proc/<pid>/stat` line; `None` if the process is gone.
pub(crate) fn read(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// The fields of a `stat` line after the command name: `pid (comm) state ppid pgrp session tty_nr
/// tpgid flags …`, where the command name may hold spaces and parentheses.
pub(crate) fn after_comm(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat.get(stat.rfind(')')? + 1..)?.split_whitespace())
}
