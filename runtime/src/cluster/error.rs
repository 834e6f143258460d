//! What can go wrong at the standing cluster's boundary, one small enum per operation: using this
//! machine's session folders ([`SessionError`]), reaching the head ([`ConnectError`]), attaching
//! a driver ([`AttachError`]) and starting a head or a node ([`StartError`]). Each keeps the
//! operating system's error as its source.

use super::session::{TEMP_DIR_ENV, TOKEN_ENV};
use crate::tracing::HookError;
use std::io;
use std::path::PathBuf;

/// Why this machine's session folders (`$FILAMENT_TEMP_DIR`) could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// A file or folder of the sessions could not be created, read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done: `create`, `use`, `write`.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The system's reason.
        #[source]
        source: io::Error,
    },
    /// `session_latest` could not be pointed at a new session.
    #[error("cannot link {} to {}: {source}", link.display(), target.display())]
    Link {
        /// The link.
        link: PathBuf,
        /// The session it should point to.
        target: PathBuf,
        /// The system's reason.
        #[source]
        source: io::Error,
    },
    /// The sessions' root is a file, not a folder.
    #[error("{} is not a folder", path.display())]
    NotAFolder {
        /// The root.
        path: PathBuf,
    },
    /// The folder belongs to another user: its sessions could point drivers at a head of theirs.
    #[error(
        "{} belongs to user {owner}, not to this user ({user}): refusing to trust its sessions; \
         set {TEMP_DIR_ENV} to a folder of yours",
        path.display()
    )]
    NotOurs {
        /// The folder.
        path: PathBuf,
        /// Its owner's uid.
        owner: u32,
        /// This process's uid.
        user: u32,
    },
    /// Others may write the folder.
    #[error(
        "{} may be written by others (mode {mode:o}): refusing to trust its sessions; \
         `chmod go-w` it or set {TEMP_DIR_ENV} to a folder of yours",
        path.display()
    )]
    WritableByOthers {
        /// The folder.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The system gave no randomness for a new cluster token.
    #[error("no randomness for the cluster token: {0}")]
    NoRandomness(#[source] getrandom::Error),
    /// `auto` was asked for, and no daemon of this machine runs.
    #[error(
        "no Filament cluster runs on this machine ({} names no running daemon); \
         start one with `filament start --head`",
        latest.display()
    )]
    NoCluster {
        /// The `session_latest` link.
        latest: PathBuf,
    },
    /// `auto` was asked for, and this machine's node has stopped (it does when it loses its
    /// head): the cluster may well run on, elsewhere.
    #[error(
        "this machine's node of the cluster at {head} is not running: it stopped (a node stops \
         when it loses its head; see {}); rejoin with `filament start --address {head}`, or \
         start a cluster here with `filament start --head`",
        latest.join("logs").join("daemon.log").display()
    )]
    NodeStopped {
        /// The `session_latest` link.
        latest: PathBuf,
        /// The head the node had joined.
        head: String,
    },
    /// `auto` was asked for, and the current session has no address.
    #[error(
        "no Filament cluster runs on this machine: {} has no address; \
         start one with `filament start --head`",
        latest.display()
    )]
    NoAddress {
        /// The `session_latest` link.
        latest: PathBuf,
    },
    /// An address that is neither `auto` nor `host:port`.
    #[error("the head address {address:?} is neither `auto` nor host:port")]
    BadAddress {
        /// The address given.
        address: String,
    },
    /// No token in the environment nor in this machine's session.
    #[error(
        "no cluster token: set {TOKEN_ENV}, or run on a machine of the cluster ({} has none)",
        path.display()
    )]
    NoToken {
        /// Where the token was looked for.
        path: PathBuf,
    },
}

/// Why this process's TLS files (a TLS cluster's CA, certificate and key) cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("cannot use {what} {}: {source}", path.display())]
    Read {
        /// Which file it is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The system's reason.
        #[source]
        source: io::Error,
    },
    /// A file holds no usable PEM certificate or key.
    #[error("{what} {} is unusable: {reason}", path.display())]
    Pem {
        /// Which file it is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The certificate, key and CA do not make a TLS configuration (a key not of the
    /// certificate, say).
    #[error("the TLS files of {origin} are unusable: {reason}")]
    Invalid {
        /// Where they came from.
        origin: String,
        /// rustls's reason.
        reason: String,
    },
    /// One variable of three was given without another.
    #[error("{given} is set but {missing} is not: TLS needs the CA, a certificate and its key")]
    Incomplete {
        /// The variable given.
        given: &'static str,
        /// The one missing.
        missing: &'static str,
    },
    /// A certificate could not be made.
    #[error("cannot make the cluster's certificates: {0}")]
    Generate(#[source] rcgen::Error),
    /// A session file could not be written.
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// Why a connection to the cluster's head did not get its welcome.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The address does not resolve.
    #[error("the head address {address:?} is not a host:port ({source})")]
    Resolve {
        /// The head's address.
        address: String,
        /// The resolver's reason.
        #[source]
        source: io::Error,
    },
    /// Nothing answers there.
    #[error("no head answers at {address}: {source}")]
    Unreachable {
        /// The head's address.
        address: String,
        /// The last connection attempt's error.
        #[source]
        source: io::Error,
    },
    /// The connection broke while saying hello or reading the answer.
    #[error("talking to the head at {address}: {source}")]
    Broken {
        /// The head's address.
        address: String,
        /// The system's reason.
        #[source]
        source: io::Error,
    },
    /// The TLS handshake failed: the head has another CA, or speaks plain TCP, or refused this
    /// process's certificate.
    #[error("TLS with the head at {address} failed ({origin}): {source}{hint}")]
    Tls {
        /// The head's address.
        address: String,
        /// Where this process's TLS files came from.
        origin: String,
        /// rustls's reason.
        #[source]
        source: io::Error,
        /// What probably happened.
        hint: &'static str,
    },
    /// The head refused: a wrong token, or a peer it does not take.
    #[error("the head at {address} refused the connection: {reason}")]
    Refused {
        /// The head's address.
        address: String,
        /// The head's reason.
        reason: String,
    },
    /// The head closed the connection without answering.
    #[error("the head at {address} closed the connection")]
    Closed {
        /// The head's address.
        address: String,
    },
    /// What listens at the address does not speak Filament's protocol: it did not answer the
    /// hello in time, or answered with something that is not a Filament message.
    #[error(
        "{address} does not answer as a Filament head: {why} (is it the head's address? \
         `filament start --head` prints it, and `session_latest/address` on the head's machine \
         holds it)"
    )]
    NotAHead {
        /// The address.
        address: String,
        /// What it did instead.
        why: String,
    },
    /// The head answered something else than a welcome for this kind of peer.
    #[error("the head at {address} answered {answer}")]
    Unexpected {
        /// The head's address.
        address: String,
        /// What it answered.
        answer: String,
    },
    /// Something of this process needed for the hello failed (its local address, its executable).
    #[error("{what}: {source}")]
    Local {
        /// What was being done.
        what: String,
        /// The system's reason.
        #[source]
        source: io::Error,
    },
}

/// Why a driver could not attach to a standing cluster (`Config::address`, `FILAMENT_ADDRESS`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// No address or token could be found for the cluster.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The head could not be reached, or refused.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The TLS files could not be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Why `filament start` could not start a head or a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Another program listens on the head's port.
    #[error(
        "port {port} is in use on {host}: another program (or head) listens there; \
         pick another with --port"
    )]
    PortInUse {
        /// The host the head was to listen on.
        host: String,
        /// The port.
        port: u16,
    },
    /// The head could not listen.
    #[error("cannot listen on {host}:{port}: {source}")]
    Listen {
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// The system's reason.
        #[source]
        source: io::Error,
    },
    /// The head's tracing startup hook was refused (it was run, in full, in the head).
    #[error("the tracing startup hook was refused: {0}")]
    Hook(#[source] HookError),
    /// The cluster's tracing hook does not load on the node that joins.
    #[error("the cluster's tracing hook cannot be used on this node: {0}")]
    HookUnusable(#[source] HookError),
    /// The session folder could not be written.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// A node could not join the head.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The TLS files could not be made or used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The system refused something else (a thread, an address).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The system's reason.
        #[source]
        source: io::Error,
    },
}
