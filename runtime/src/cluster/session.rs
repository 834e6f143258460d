//! Session folders: what a daemon of this machine leaves for the commands and drivers that come
//! after it.
//!
//! ```text
//! <root>/                       $FILAMENT_TEMP_DIR, else /tmp/filament
//! <root>/session_latest         a link to the session drivers of this machine attach to
//! <root>/session_<time>_<pid>/
//!     address                   the head's host:port
//!     token                     the cluster token (mode 0600)
//!     role                      head | node
//!     daemon.pid                the daemon's process id, while it runs
//!     tls/                      a TLS cluster's: ca.pem, cert.pem, key.pem (0600), and on the
//!                               head ca.key (0600), the CA's key nodes of its machine sign with
//!     logs/daemon.log           what the daemon and its workers print
//! ```

pub use super::error::SessionError;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where session folders live when `FILAMENT_TEMP_DIR` is not set.
pub const DEFAULT_ROOT: &str = "/tmp/filament";
/// The variable that moves the session folders.
pub const TEMP_DIR_ENV: &str = "FILAMENT_TEMP_DIR";
/// The variable that gives the cluster token (else it is read from the session).
pub const TOKEN_ENV: &str = "FILAMENT_CLUSTER_TOKEN";
/// The variable that gives drivers the head's address: `auto` or `host:port`.
pub const ADDRESS_ENV: &str = "FILAMENT_ADDRESS";

/// The root of the session folders.
pub fn root() -> PathBuf {
    std::env::var_os(TEMP_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
}

/// The root of the session folders as it really is (links resolved), checked to be this user's
/// to write — a folder another user made (or can write) could point drivers at a head of theirs, whose
/// hook they would load. `Ok(None)` if there is no root yet.
pub(crate) fn checked_root() -> Result<Option<PathBuf>, SessionError> {
    let root = root();
    match fs::canonicalize(&root) {
        Ok(real) => check_private(&real).map(|()| Some(real)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SessionError::Io {
            action: "use",
            path: root,
            source,
        }),
    }
}

/// `dir` must be a folder owned by this user that no one else may write (the token files in it are
/// readable by this user only).
fn check_private(dir: &Path) -> Result<(), SessionError> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(dir).map_err(|source| SessionError::Io {
        action: "use",
        path: dir.to_owned(),
        source,
    })?;
    let user = rustix::process::getuid().as_raw();
    if !meta.is_dir() {
        return Err(SessionError::NotAFolder {
            path: dir.to_owned(),
        });
    }
    if meta.uid() != user {
        return Err(SessionError::NotOurs {
            path: dir.to_owned(),
            owner: meta.uid(),
            user,
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(SessionError::WritableByOthers {
            path: dir.to_owned(),
            mode: meta.mode() & 0o777,
        });
    }
    Ok(())
}

/// The link to the current session.
pub fn latest(root: &Path) -> PathBuf {
    root.join("session_latest")
}

/// A new token: 32 random bytes, in hex.
pub(crate) fn new_token() -> Result<String, SessionError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(SessionError::NoRandomness)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A new session folder (with its `logs/`), readable by this user only, under the real path of
/// `root` (which must be this user's alone).
pub(crate) fn create(root: &Path) -> Result<PathBuf, SessionError> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| SessionError::Io {
            action,
            path,
            source,
        }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(io("create", root))?;
    let root = &fs::canonicalize(root).map_err(io("use", root))?;
    check_private(root)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let dir = root.join(format!("session_{stamp}_{}", std::process::id()));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir.join("logs"))
        .map_err(io("create", &dir))?;
    Ok(dir)
}

/// Writes `name` in `dir`, readable by this user only, whole: it appears with its contents (a
/// reader polling for it never sees it half written).
pub(crate) fn write_private(dir: &Path, name: &str, contents: &str) -> Result<(), SessionError> {
    let path = dir.join(name);
    let staging = dir.join(format!(".{name}.{}", std::process::id()));
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staging)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .and_then(|()| fs::rename(&staging, &path));
    written.map_err(|source| {
        let _ = fs::remove_file(&staging);
        SessionError::Io {
            action: "write",
            path,
            source,
        }
    })
}

/// Reads `name` in `dir`, trimmed; `None` if it is not there.
pub(crate) fn read(dir: &Path, name: &str) -> Option<String> {
    let mut text = String::new();
    fs::File::open(dir.join(name))
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    Some(text.trim().to_owned())
}

/// Points `session_latest` at `dir`.
pub(crate) fn set_latest(root: &Path, dir: &Path) -> Result<(), SessionError> {
    let link = latest(root);
    let staging = root.join(format!(".session_latest.{}", std::process::id()));
    let _ = fs::remove_file(&staging);
    std::os::unix::fs::symlink(dir, &staging)
        .and_then(|()| fs::rename(&staging, &link))
        .map_err(|source| SessionError::Link {
            link,
            target: dir.to_owned(),
            source,
        })
}

/// A daemon of a session folder that still runs.
#[derive(Debug, Clone)]
pub(crate) struct Daemon {
    pub(crate) dir: PathBuf,
    pub(crate) pid: u32,
    pub(crate) role: String,
}

/// The daemon of `dir`, if it runs: its pid file names a live `filament` daemon process (a pid
/// reused by another program does not count).
pub(crate) fn live_daemon(dir: &Path) -> Option<Daemon> {
    // `session_latest` is a link: the daemon was told the folder's real path.
    let dir = &fs::canonicalize(dir).ok()?;
    let pid: u32 = read(dir, "daemon.pid")?.parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let marker = format!("--session\0{}\0", dir.display());
    let ours = cmdline
        .windows(marker.len())
        .any(|w| w == marker.as_bytes());
    // A zombie has an empty command line and is not running.
    ours.then(|| Daemon {
        dir: dir.to_owned(),
        pid,
        role: read(dir, "role").unwrap_or_else(|| "unknown".into()),
    })
}

/// Every daemon of this machine's sessions that runs.
pub(crate) fn live_daemons(root: &Path) -> Vec<Daemon> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut daemons: Vec<Daemon> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("session_") && name != "session_latest"
        })
        .filter_map(|e| live_daemon(&e.path()))
        .collect();
    daemons.sort_by(|a, b| a.dir.cmp(&b.dir));
    daemons
}

/// The head's address: `address` itself (checked to be host:port), or for `auto` the one in
/// this machine's `session_latest` folder.
pub(crate) fn resolve_address(address: &str) -> Result<String, SessionError> {
    let root = checked_root()?.unwrap_or_else(root);
    let latest = latest(&root);
    if let Ok(session) = fs::canonicalize(&latest) {
        check_private(&session)?;
    }
    let address = if address == "auto" {
        if live_daemon(&latest).is_none() {
            if read(&latest, "role").as_deref() == Some("node")
                && let Some(head) = read(&latest, "address")
            {
                return Err(SessionError::NodeStopped { latest, head });
            }
            return Err(SessionError::NoCluster { latest });
        }
        read(&latest, "address").ok_or(SessionError::NoAddress { latest })?
    } else {
        let valid = address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid {
            return Err(SessionError::BadAddress {
                address: address.to_owned(),
            });
        }
        address.to_owned()
    };
    Ok(address)
}

/// The TLS drivers and commands of this machine use: the files [`super::tls::CA_ENV`] and its
/// siblings name, else this machine's `session_latest` folder's; `None` (plain TCP) if neither.
pub(crate) fn resolve_tls() -> Result<Option<super::tls::Tls>, super::TlsError> {
    use super::tls::{Tls, TlsFiles};
    let files = match TlsFiles::from_env()? {
        Some(files) => Some(files),
        None => TlsFiles::of_session(&latest(&checked_root()?.unwrap_or_else(root))),
    };
    files.map(|files| Tls::load(&files)).transpose()
}

/// The head address and token drivers and commands of this machine use: the `session_latest`
/// folder's, unless `address` (or the token variable) says otherwise.
pub(crate) fn resolve(address: &str) -> Result<(String, String), SessionError> {
    let address = resolve_address(address)?;
    let latest = latest(&checked_root()?.unwrap_or_else(root));
    let token = match std::env::var(TOKEN_ENV) {
        Ok(token) if !token.trim().is_empty() => token.trim().to_owned(),
        _ => read(&latest, "token").ok_or_else(|| SessionError::NoToken {
            path: latest.join("token"),
        })?,
    };
    Ok((address, token))
}
