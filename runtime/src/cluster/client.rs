//! A driver attached to a standing cluster: its job's registration with the head, and the link
//! through which it asks for workers and hears about those that failed to start.

use super::error::{AttachError, ConnectError};
use super::proto::{self, FromHead, JobRequest, Peer, ToHead, Welcome};
use super::session;
use crate::wire::{FrameReader, Outbox};
use std::net::TcpListener;

/// A job registered with the head.
pub(crate) struct Attached {
    pub(crate) address: String,
    pub(crate) token: String,
    pub(crate) job_id: String,
    pub(crate) hook: Option<String>,
    /// The cluster's node on this machine, if there is one.
    pub(crate) node_id: Option<String>,
    /// CPUs of the whole cluster.
    pub(crate) cpus: u32,
    /// Where this job's workers connect.
    pub(crate) listener: TcpListener,
    pub(crate) outbox: Outbox<ToHead>,
    pub(crate) reader: FrameReader,
    /// The cluster's TLS: its workers connect with it.
    pub(crate) tls: Option<std::sync::Arc<super::tls::Tls>>,
}

/// The environment variables that make a job's configuration: its workers get the driver's, and
/// none of their node's.
pub(crate) const JOB_ENV_PREFIXES: [&str; 3] = ["OTEL_", "FILAMENT_", "RUST_"];

/// Environment variables a job's workers get from its driver: the job's configuration, not the
/// driver's own connection to the cluster.
fn job_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(key, _)| {
            JOB_ENV_PREFIXES.iter().any(|p| key.starts_with(p))
                && !OWN_VARIABLES.contains(&key.as_str())
        })
        .collect()
}

/// The variables of a process's own place in a cluster, which its workers never get from it.
const OWN_VARIABLES: [&str; 9] = [
    super::tls::CA_ENV,
    super::tls::CERT_ENV,
    super::tls::KEY_ENV,
    crate::worker::WORKER_ENV,
    session::ADDRESS_ENV,
    session::TOKEN_ENV,
    session::TEMP_DIR_ENV,
    super::node::NODE_ID_ENV,
    super::node::NODE_PIPE_ENV,
];

/// The driver's environment as its workers' hooks read it (`TracingSetup::config`): all of it,
/// but its own connection to the cluster (the token above all) and what is not UTF-8.
pub(crate) fn hook_environment() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(key, _)| !OWN_VARIABLES.contains(&key.as_str()))
        .collect()
}

/// Registers a job with the head at `address` (`auto`: this machine's current session), with
/// `token` or the one [`session::resolve`] finds, and `tls` or the TLS files
/// [`session::resolve_tls`] finds.
pub(crate) fn attach(
    address: &str,
    token: Option<&str>,
    tls: Option<&super::tls::TlsFiles>,
) -> Result<Attached, AttachError> {
    let (address, token) = match token {
        Some(token) => (session::resolve_address(address)?, token.to_owned()),
        None => session::resolve(address)?,
    };
    let tls = match tls {
        Some(files) => Some(super::tls::Tls::load(files)?),
        None => session::resolve_tls()?,
    };
    let mut listener = None;
    let (welcome, conn, reader) = proto::connect(&address, &token, tls.as_ref(), |stream| {
        // Workers connect back on the address the head sees this driver at: reachable from the
        // cluster if the head is.
        let local = |what: String| move |source| ConnectError::Local { what, source };
        let here = stream.local_addr().map_err(local(
            "the local address of the connection to the head".into(),
        ))?;
        let bound = TcpListener::bind((here.ip(), 0))
            .map_err(local(format!("cannot listen for workers on {}", here.ip())))?;
        let worker_address = bound
            .local_addr()
            .map_err(local("cannot read the workers' address".into()))?
            .to_string();
        listener = Some(bound);
        let job = JobRequest {
            pid: std::process::id(),
            exe: std::fs::read_link("/proc/self/exe")
                .map_err(local("cannot read /proc/self/exe".into()))?,
            args: std::env::args().skip(1).collect(),
            cwd: std::env::current_dir().unwrap_or_default(),
            env: job_env(),
            worker_address,
        };
        Ok((Peer::Driver, Some(ToHead::Job(job))))
    })?;
    let Welcome::Driver {
        job_id,
        hook,
        cpus,
        node_id,
        notice,
    } = welcome
    else {
        return Err(ConnectError::Unexpected {
            answer: format!("{welcome:?} to a driver"),
            address,
        }
        .into());
    };
    if let Some(notice) = notice {
        eprintln!("filament: {notice}");
    }
    Ok(Attached {
        address,
        token,
        job_id,
        hook,
        node_id,
        cpus,
        listener: listener.expect("made before the hello"),
        outbox: Outbox::new(conn),
        reader,
        tls: tls.map(std::sync::Arc::new),
    })
}

/// The next worker the head says failed to start (`(worker, why)`); `Err` once the head is gone,
/// with why.
pub(crate) fn next_worker_failure(
    reader: &mut FrameReader,
    address: &str,
) -> Result<(u32, String), String> {
    loop {
        match reader.read::<FromHead>() {
            Ok(Some(FromHead::WorkerFailed { worker, message })) => return Ok((worker, message)),
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(format!(
                    "the cluster's head at {address} is gone: it closed the connection"
                ));
            }
            Err(e) => return Err(format!("the cluster's head at {address} is gone: {e}")),
        }
    }
}
