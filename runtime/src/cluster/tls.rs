//! TLS for every TCP connection of a standing cluster (`filament start --head --tls`): node ↔ head,
//! driver ↔ head, `filament status`, worker ↔ driver. Both ends present a certificate signed by the
//! cluster's CA (mutual authentication), so the token is no longer the only secret on the wire.
//!
//! The head makes the cluster's CA and a certificate of its own (rcgen) in `<session>/tls/`; a
//! node on a machine where the CA's key is found issues itself a certificate; elsewhere nodes and
//! drivers take `--tls-ca/--tls-cert/--tls-key` or [`CA_ENV`]/[`CERT_ENV`]/[`KEY_ENV`] (an
//! organisation's own PKI). Every certificate names [`SERVER_NAME`]: peers are members of the cluster
//! by their CA, whatever machine or address they run at. Workers get their node's files on their
//! standard input, after the token.
//!
//! A connection is a `TlsStream`: one reader thread and any number of writer threads share it, as
//! a plain socket. The rustls state sits behind a short lock; nobody holds it across a blocking
//! socket call (a writer stuck on a full socket would otherwise stop the reader that drains the
//! other direction, and two such peers would wait for each other forever).

use super::error::TlsError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The variable that names the cluster CA's certificate (PEM) for nodes, drivers and `status`.
pub const CA_ENV: &str = "FILAMENT_TLS_CA";
/// The variable that names this machine's certificate (PEM, signed by the cluster CA).
pub const CERT_ENV: &str = "FILAMENT_TLS_CERT";
/// The variable that names this machine's private key (PEM).
pub const KEY_ENV: &str = "FILAMENT_TLS_KEY";
/// The name every certificate of a cluster carries (as a DNS subject alternative name), and that
/// every client checks: a certificate of an organisation's PKI must name it too.
pub const SERVER_NAME: &str = "filament-cluster";
/// How long a TLS handshake may take.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The folder of a session that holds its TLS files.
pub(crate) const SESSION_FOLDER: &str = "tls";
const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";

/// Where a process's TLS files are (PEM): the cluster CA's certificate, and this process's
/// certificate (signed by that CA, naming [`SERVER_NAME`]) and private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate.
    pub ca: PathBuf,
    /// This process's certificate.
    pub cert: PathBuf,
    /// This process's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files of a session folder, if it has TLS.
    pub(crate) fn of_session(dir: &Path) -> Option<TlsFiles> {
        let tls = dir.join(SESSION_FOLDER);
        tls.join(CA_FILE).exists().then(|| TlsFiles {
            ca: tls.join(CA_FILE),
            cert: tls.join(CERT_FILE),
            key: tls.join(KEY_FILE),
        })
    }

    /// The files the variables name, if [`CA_ENV`] is set (then the other two must be).
    pub(crate) fn from_env() -> Result<Option<TlsFiles>, TlsError> {
        let var = |name: &'static str| std::env::var_os(name).filter(|v| !v.is_empty());
        let Some(ca) = var(CA_ENV) else {
            return Ok(None);
        };
        let cert = var(CERT_ENV).ok_or(TlsError::Incomplete {
            given: CA_ENV,
            missing: CERT_ENV,
        })?;
        let key = var(KEY_ENV).ok_or(TlsError::Incomplete {
            given: CA_ENV,
            missing: KEY_ENV,
        })?;
        Ok(Some(TlsFiles {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
        }))
    }

    /// The CA's private key beside its certificate, if there is one (a head's session).
    pub(crate) fn ca_key(&self) -> Option<PathBuf> {
        let key = self.ca.with_file_name(CA_KEY_FILE);
        key.exists().then_some(key)
    }
}

/// The three PEM texts a process authenticates with.
#[derive(Clone)]
pub(crate) struct TlsPem {
    pub(crate) ca: String,
    pub(crate) cert: String,
    pub(crate) key: String,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsPem { .. }")
    }
}

impl TlsPem {
    /// Reads the files, naming the one that cannot be read.
    pub(crate) fn read(files: &TlsFiles) -> Result<TlsPem, TlsError> {
        let read = |what: &'static str, path: &Path| {
            std::fs::read_to_string(path).map_err(|source| TlsError::Read {
                what,
                path: path.to_owned(),
                source,
            })
        };
        Ok(TlsPem {
            ca: read("the cluster CA's certificate", &files.ca)?,
            cert: read("the certificate", &files.cert)?,
            key: read("the private key", &files.key)?,
        })
    }

    /// Writes them as a session's TLS files (the key readable by this user only).
    pub(crate) fn write_to_session(&self, dir: &Path) -> Result<TlsFiles, TlsError> {
        let tls = make_folder(dir)?;
        super::session::write_private(&tls, CA_FILE, &self.ca)?;
        super::session::write_private(&tls, CERT_FILE, &self.cert)?;
        super::session::write_private(&tls, KEY_FILE, &self.key)?;
        Ok(TlsFiles::of_session(dir).expect("just written"))
    }

    /// As lines for a worker's standard input (after the token): `tls`, the three texts, `end`.
    pub(crate) fn to_lines(&self) -> String {
        format!(
            "ca\n{}\ncert\n{}\nkey\n{}\nend\n",
            self.ca.trim(),
            self.cert.trim(),
            self.key.trim()
        )
    }

    /// Reads what [`TlsPem::to_lines`] wrote.
    pub(crate) fn from_lines(input: &mut impl io::BufRead) -> io::Result<TlsPem> {
        let mut sections: [String; 3] = Default::default();
        let mut current = None;
        let mut line = String::new();
        loop {
            line.clear();
            if input.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the TLS files ended early",
                ));
            }
            match line.trim_end() {
                "ca" => current = Some(0),
                "cert" => current = Some(1),
                "key" => current = Some(2),
                "end" => break,
                text => {
                    if let Some(index) = current {
                        sections[index].push_str(text);
                        sections[index].push('\n');
                    }
                }
            }
        }
        let [ca, cert, key] = sections;
        Ok(TlsPem { ca, cert, key })
    }
}

fn make_folder(dir: &Path) -> Result<PathBuf, TlsError> {
    use std::os::unix::fs::DirBuilderExt;
    let tls = dir.join(SESSION_FOLDER);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&tls)
        .map_err(|source| TlsError::Read {
            what: "the session's TLS folder",
            path: tls.clone(),
            source,
        })?;
    Ok(tls)
}

/// The parameters of a cluster CA, its name made of its key: a node signs with the CA's key alone,
/// and two clusters' CAs never share a name (a certificate of the other is then of an unknown
/// issuer, not a bad signature).
fn ca_params(ca_key: &rcgen::KeyPair) -> rcgen::CertificateParams {
    let raw = ca_key.public_key_raw();
    let id: String = raw[raw.len().saturating_sub(8)..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("Filament cluster CA {id}"),
    );
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A certificate for one member (`who`: `head`, `node <id>`), for both ends of a connection.
fn member_cert(
    who: &str,
    ca_key: &rcgen::KeyPair,
) -> Result<(rcgen::Certificate, rcgen::KeyPair), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("Filament {who}"));
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let issuer = rcgen::Issuer::new(ca_params(ca_key), ca_key);
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert, key))
}

/// Makes a new cluster CA and the head's certificate in `<session>/tls/` (keys 0600).
pub(crate) fn generate_cluster(dir: &Path) -> Result<TlsFiles, TlsError> {
    let ca_key = rcgen::KeyPair::generate().map_err(TlsError::Generate)?;
    let ca = ca_params(&ca_key)
        .self_signed(&ca_key)
        .map_err(TlsError::Generate)?;
    let (cert, key) = member_cert("head", &ca_key).map_err(TlsError::Generate)?;
    let tls = make_folder(dir)?;
    super::session::write_private(&tls, CA_KEY_FILE, &ca_key.serialize_pem())?;
    TlsPem {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
    .write_to_session(dir)
}

/// Issues a node a certificate of its own with the CA key at `ca_key` into `<session>/tls/`.
pub(crate) fn issue_for_node(ca: &Path, ca_key: &Path, dir: &Path) -> Result<TlsFiles, TlsError> {
    let read = |what: &'static str, path: &Path| {
        std::fs::read_to_string(path).map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })
    };
    let ca_pem = read("the cluster CA's certificate", ca)?;
    let key_pem = read("the cluster CA's key", ca_key)?;
    let ca_key = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Pem {
        what: "the cluster CA's key",
        path: ca_key.to_owned(),
        reason: e.to_string(),
    })?;
    let (cert, key) = member_cert("node", &ca_key).map_err(TlsError::Generate)?;
    TlsPem {
        ca: ca_pem,
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
    .write_to_session(dir)
}

/// How a head or node gets its TLS files.
#[derive(Debug, Clone)]
pub(crate) enum TlsSetup {
    /// A new cluster CA (a head's `--tls`).
    Generate,
    /// These files: an organisation's PKI, or (for a node) the CA found on its machine.
    Files(TlsFiles),
}

impl TlsSetup {
    /// The files of the daemon with session `dir`, written there (keys 0600) for the drivers and
    /// commands of its machine: a new CA (head), a certificate of its own for a `node` when the
    /// CA's key is beside the CA (a node on the head's machine), else copies of the files given.
    pub(crate) fn make(&self, dir: &Path, node: bool) -> Result<Tls, TlsError> {
        let files = match self {
            TlsSetup::Generate => generate_cluster(dir)?,
            TlsSetup::Files(files) => match files.ca_key().filter(|_| node) {
                Some(ca_key) => issue_for_node(&files.ca, &ca_key, dir)?,
                None => TlsPem::read(files)?.write_to_session(dir)?,
            },
        };
        Tls::load(&files)
    }
}

/// A process's TLS: its identity and the cluster's CA, as client and server configurations.
#[derive(Clone)]
pub(crate) struct Tls {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
    /// What the process's workers get.
    pub(crate) pem: TlsPem,
    /// Where the files were read from, for errors.
    pub(crate) origin: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("origin", &self.origin).finish()
    }
}

impl Tls {
    /// Reads and checks the files.
    pub(crate) fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        let pem = TlsPem::read(files)?;
        Tls::from_pem(pem, Some(files), format!("CA {}", files.ca.display()))
    }

    /// Builds the configurations from PEM texts; `files` names them in errors.
    pub(crate) fn from_pem(
        pem: TlsPem,
        files: Option<&TlsFiles>,
        origin: String,
    ) -> Result<Tls, TlsError> {
        let path = |pick: fn(&TlsFiles) -> &PathBuf| {
            files
                .map(|f| pick(f).clone())
                .unwrap_or_else(|| PathBuf::from("(standard input)"))
        };
        let bad = |what: &'static str, path: PathBuf| {
            move |reason: String| TlsError::Pem { what, path, reason }
        };
        let certs = |text: &str, what, path: PathBuf| {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(text.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(what, path.clone())(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad(what, path)("no certificate in it".into()));
            }
            Ok(certs)
        };
        let ca = certs(&pem.ca, "the cluster CA's certificate", path(|f| &f.ca))?;
        let chain = certs(&pem.cert, "the certificate", path(|f| &f.cert))?;
        let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes())
            .map_err(|e| bad("the private key", path(|f| &f.key))(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in ca {
            roots
                .add(cert)
                .map_err(|e| bad("the cluster CA's certificate", path(|f| &f.ca))(e.to_string()))?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let invalid = |e: rustls::Error| TlsError::Invalid {
            origin: origin.clone(),
            reason: e.to_string(),
        };
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::clone(&roots),
            Arc::clone(&provider),
        )
        .build()
        .map_err(|e| TlsError::Invalid {
            origin: origin.clone(),
            reason: e.to_string(),
        })?;
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(invalid)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(invalid)?;
        // Nothing after the handshake: no ticket a reader would have to answer.
        server.send_tls13_tickets = 0;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(invalid)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(invalid)?;
        Ok(Tls {
            client: Arc::new(client),
            server: Arc::new(server),
            pem,
            origin,
        })
    }

    /// The client's side of a handshake on `stream`, to a member of the cluster.
    pub(crate) fn connect(&self, stream: TcpStream) -> io::Result<TlsStream> {
        let name = ServerName::try_from(SERVER_NAME).expect("a valid DNS name");
        let conn = rustls::ClientConnection::new(Arc::clone(&self.client), name)
            .map_err(io::Error::other)?;
        TlsStream::handshake(stream, conn.into())
    }

    /// The server's side of a handshake on `stream`. A peer whose first byte is not a TLS
    /// handshake record is [`Accepted::Plain`]: the caller may answer it in plain words.
    pub(crate) fn accept(&self, stream: TcpStream) -> Accepted {
        let mut first = [0u8; 1];
        match stream.peek(&mut first) {
            Ok(1) if first[0] != 0x16 => return Accepted::Plain(stream),
            Ok(_) => {}
            Err(e) => return Accepted::Failed(e),
        }
        let conn = match rustls::ServerConnection::new(Arc::clone(&self.server)) {
            Ok(conn) => conn,
            Err(e) => return Accepted::Failed(io::Error::other(e)),
        };
        match TlsStream::handshake(stream, conn.into()) {
            Ok(tls) => Accepted::Tls(Box::new(tls)),
            Err(e) => Accepted::Failed(e),
        }
    }
}

/// How a server's handshake ended.
#[derive(Debug)]
pub(crate) enum Accepted {
    Tls(Box<TlsStream>),
    /// The peer speaks plain TCP.
    Plain(TcpStream),
    Failed(io::Error),
}

/// Answers a plain peer at a TLS end with `refusal`, in a plain frame it can read, then lets it
/// close first: closing with its hello unread would reset the connection, and the answer with it.
pub(crate) fn refuse_plain(stream: TcpStream, refusal: &impl serde::Serialize) {
    let conn = crate::wire::Conn::tcp(stream);
    if crate::wire::write_message(&conn, refusal).is_err() {
        return;
    }
    let crate::wire::Conn::Tcp(stream) = conn else {
        return;
    };
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut sink = [0u8; 4096];
    let mut left = 256 * 1024;
    while left > 0 {
        match (&stream).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left -= n.min(left),
        }
    }
}

/// Whether the first bytes a plain peer sent (peeked) start a TLS handshake: a TLS peer at a
/// plain cluster.
pub(crate) fn speaks_tls(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first), Ok(1) if first[0] == 0x16)
}

/// A TLS connection shared by one reader and many writers, through `&TlsStream`.
#[derive(Debug)]
pub(crate) struct TlsStream {
    socket: TcpStream,
    state: Mutex<State>,
    /// The reader's buffer for bytes from the socket (only the reader takes it: never contended).
    raw: Mutex<Vec<u8>>,
    /// Held while records go out on the socket: they must go in the order they were sealed.
    sending: Mutex<()>,
}

#[derive(Debug)]
struct State {
    conn: rustls::Connection,
    /// Bytes read from the socket that rustls has not taken yet.
    incoming: Vec<u8>,
    /// Whether the socket reached its end.
    eof: bool,
}

/// Most plaintext sealed in one go: large frames are encrypted and sent piece by piece.
const SEAL_CHUNK: usize = 256 * 1024;

impl TlsStream {
    fn handshake(mut socket: TcpStream, mut conn: rustls::Connection) -> io::Result<TlsStream> {
        let before = socket.read_timeout()?;
        socket.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut socket) {
                // The alert that says why, if rustls has one for the peer.
                let _ = conn.write_tls(&mut socket);
                return Err(e);
            }
        }
        socket.set_read_timeout(before)?;
        Ok(TlsStream {
            socket,
            state: Mutex::new(State {
                conn,
                incoming: Vec::new(),
                eof: false,
            }),
            sending: Mutex::new(()),
            raw: Mutex::new(vec![0; 64 * 1024]),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The socket underneath (timeouts, shutdown, peer address, readiness).
    pub(crate) fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// Ends both directions of the socket.
    pub(crate) fn shutdown(&self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }

    /// Whether decrypted bytes, or bytes to decrypt, wait: a read would not block.
    pub(crate) fn has_buffered(&self) -> bool {
        let mut state = self.state();
        !state.incoming.is_empty()
            || state
                .conn
                .process_new_packets()
                .is_ok_and(|io| io.plaintext_bytes_to_read() > 0)
    }

    /// Reads plaintext: what rustls holds, else more bytes from the socket (without the lock).
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut raw = self.raw.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let wants_write = {
                let mut state = self.state();
                let State {
                    conn,
                    incoming,
                    eof,
                } = &mut *state;
                while !incoming.is_empty() {
                    let taken = match conn.read_tls(&mut &incoming[..]) {
                        Ok(taken) => taken,
                        // Its buffer is full: the plaintext below is read first.
                        Err(_) => break,
                    };
                    incoming.drain(..taken);
                    if let Err(e) = conn.process_new_packets() {
                        let _ = conn.write_tls(&mut &self.socket);
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    if taken == 0 {
                        break;
                    }
                }
                match conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if *eof && incoming.is_empty() {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                conn.wants_write()
            };
            if wants_write {
                self.send_sealed();
            }
            let n = (&self.socket).read(&mut raw)?;
            let mut state = self.state();
            if n == 0 {
                state.eof = true;
                let _ = state.conn.read_tls(&mut &[][..]);
            } else {
                state.incoming.extend_from_slice(&raw[..n]);
            }
        }
    }

    /// Seals `buf` and sends it, in order with other writers.
    pub(crate) fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        let sending = self.sending.lock().unwrap_or_else(|p| p.into_inner());
        let mut at = 0;
        let mut sealed = Vec::new();
        loop {
            {
                let mut state = self.state();
                if at < buf.len() {
                    let end = buf.len().min(at + SEAL_CHUNK);
                    at += state.conn.writer().write(&buf[at..end])?;
                }
                while state.conn.wants_write() {
                    state.conn.write_tls(&mut sealed)?;
                }
            }
            if sealed.is_empty() && at == buf.len() {
                break;
            }
            (&self.socket).write_all(&sealed)?;
            sealed.clear();
        }
        drop(sending);
        // What a reader sealed meanwhile (it could not send: this writer held the socket).
        if self.state().conn.wants_write() {
            self.send_sealed();
        }
        Ok(())
    }

    /// Sends what rustls sealed on its own (alerts, key updates), unless a writer is at it:
    /// that writer sends it after its own bytes.
    fn send_sealed(&self) {
        let Ok(_sending) = self.sending.try_lock() else {
            return;
        };
        let mut sealed = Vec::new();
        {
            let mut state = self.state();
            while state.conn.wants_write() {
                if state.conn.write_tls(&mut sealed).is_err() {
                    break;
                }
            }
        }
        let _ = (&self.socket).write_all(&sealed);
    }
}
