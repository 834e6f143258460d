//! Reading a process's `/proc/<pid>/stat`.

/// The fields of process `pid`'s `/proc/<pid>/stat` after its command name, state first; `None`
/// if the process is gone.
pub(crate) fn read(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(after_comm(&stat)?.map(str::to_owned).collect())
}

/// The fields of a `stat` line after the command name: `pid (comm) state ppid pgrp session tty_nr
/// tpgid flags …`, where the command name may hold spaces and parentheses.
pub(crate) fn after_comm(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat.get(stat.rfind(')')? + 1..)?.split_whitespace())
}
