//! The folder of an embedded cluster's socket, `<tmp>/filament-<driver pid>-<hex>/driver.sock`:
//! created for this user alone, and removed by whoever outlives the driver — the driver when it
//! stops, its workers when it was killed (they see its connection end), or the next `init` on
//! this machine for a driver killed before any worker noticed.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const PREFIX: &str = "filament-";
/// The socket's name in the folder.
const SOCKET: &str = "driver.sock";

/// Creates a new folder for this process's embedded cluster `cluster`, mode 0700 whatever the
/// umask, and checked to be this user's and private after creation; returns the socket's path.
pub(crate) fn create(cluster: u64) -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "{PREFIX}{}-{:08x}",
        std::process::id(),
        cluster as u32
    ));
    // Not `recursive`: the folder must be new, never one someone prepared.
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    // The umask only removes bits; set the mode outright, then check what is there.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let meta = std::fs::symlink_metadata(&dir)?;
    let user = rustix::process::getuid().as_raw();
    if !meta.is_dir() || meta.uid() != user || meta.mode() & 0o077 != 0 {
        return Err(std::io::Error::other(format!(
            "{} is not a folder private to this user (owner {}, mode {:o})",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o777
        )));
    }
    Ok(dir.join(SOCKET))
}

/// Removes the folder of `socket` (and the socket in it) if its driver no longer runs. Only a
/// folder of ours with that name is touched, and only its socket: anything else in it stays.
pub(crate) fn remove_if_driver_gone(socket: &Path) {
    let Some(dir) = socket.parent() else {
        return;
    };
    let Some(driver) = driver_pid(dir) else {
        return;
    };
    let ours = std::fs::symlink_metadata(dir)
        .is_ok_and(|meta| meta.is_dir() && meta.uid() == rustix::process::getuid().as_raw());
    if ours && !running(driver) {
        let _ = std::fs::remove_file(dir.join(SOCKET));
        let _ = std::fs::remove_dir(dir);
    }
}

/// Removes the folders that embedded clusters of drivers no longer running left in the temporary
/// folder (drivers killed before their workers noticed, or with no worker at all).
pub(crate) fn sweep() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(PREFIX) {
            remove_if_driver_gone(&entry.path().join(SOCKET));
        }
    }
}

/// The driver's pid from a folder's name, `filament-<pid>-<hex>`.
fn driver_pid(dir: &Path) -> Option<u32> {
    let name = dir.file_name()?.to_str()?;
    let (pid, hex) = name.strip_prefix(PREFIX)?.split_once('-')?;
    (hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(())?;
    pid.parse().ok()
}

/// The kernel's `PF_EXITING`: set on a thread as it starts to exit, before its files are closed.
const PF_EXITING: u64 = 0x4;

/// Whether process `pid` runs: not a zombie, and not on its way out. A worker sees its driver's
/// connection end while the killed driver is still exiting (its files close before it becomes a
/// zombie), so a driver that is exiting counts as gone.
fn running(pid: u32) -> bool {
    crate::proc_stat::read(pid).is_some_and(|stat| runs(&stat))
}

/// Whether a process whose `/proc/<pid>/stat` reads `stat` runs (see [`running`]).
fn runs(stat: &str) -> bool {
    let Some(mut fields) = crate::proc_stat::after_comm(stat) else {
        return false;
    };
    let state = fields.next();
    let flags = fields.nth(5).and_then(|f| f.parse::<u64>().ok());
    !matches!(state, Some("Z" | "X") | None) && flags.is_some_and(|f| f & PF_EXITING == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_runs_unless_it_is_a_zombie_or_exiting() {
        // Fields as Linux prints them; the comm holds a space and a parenthesis.
        let stat = |state: &str, flags: u64| {
            format!("4242 (filament (x) y) {state} 1 4242 4242 0 -1 {flags} 120 0 0 0 3 1 0 0 20 0")
        };
        assert!(runs(&stat("S", 0x0040_0000)));
        assert!(runs(&stat("R", 0x0040_0040)));
        assert!(
            !runs(&stat("R", 0x0040_0044)),
            "PF_EXITING: killed, closing its files"
        );
        assert!(!runs(&stat("D", 0x4)));
        assert!(!runs(&stat("Z", 0x0040_0000)));
        assert!(!runs(&stat("X", 0)));
        assert!(!runs("4242 (cut short"));
        assert!(!runs("4242 (no flags) S 1 2"));

        assert!(running(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!running(pid));
    }
}
