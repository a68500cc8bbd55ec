//! TLS termination for the embedded proxy (`traffic.proxy.tls`): the certificates,
//! which one a client gets (by SNI), and their reload when the files change.
//!
//! Owns reading and checking the PEM files, the certificate resolver and the
//! handshake-failure count. It must not look at requests: once a handshake is done the
//! connection is served exactly as a plain one (see `mod.rs`).
//!
//! Guarantees: the certificates in force are one `Arc` behind a lock, read once per
//! handshake; a reload builds the whole new set first and swaps it in one step, so a
//! handshake sees the old set or the new one, never a mix, and connections already
//! open are never touched. A reload that fails (a missing file, bad PEM, a key that does
//! not match its certificate) keeps the set in force and is logged.
//!
//! Assumptions: the files are small (read whole, on the thread that reloads), and a
//! rotation changes a file's modification time, length or inode (a rename over it, a
//! rewrite, `cp`); [`TlsTerminator::reload`] forces a reload otherwise.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rampart_core::policy::ProxyTls;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The protocols offered in ALPN, most preferred first: a client that offers both
/// gets HTTP/2; one that offers neither (or no ALPN) is served HTTP/1.1.
pub const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// How often the files are checked for a change, by default.
pub const POLL_EVERY: Duration = Duration::from_secs(2);

/// Which file of a certificate a problem is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFile {
    /// The certificate chain (`cert`).
    Cert,
    /// The private key (`key`).
    Key,
}

/// Why a certificate cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// Which file of the certificate.
        which: TlsFile,
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not what it should be: no PEM block of the right kind, or one that
    /// does not parse.
    #[error("{}: {detail}", path.display())]
    Parse {
        /// Which file of the certificate.
        which: TlsFile,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The key is not the certificate's (or not a kind of key rustls signs with).
    #[error("{}: {detail}", key.display())]
    Key {
        /// The key file.
        key: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
}

impl TlsError {
    /// The file the problem is in.
    pub fn file(&self) -> TlsFile {
        match self {
            TlsError::Read { which, .. } | TlsError::Parse { which, .. } => *which,
            TlsError::Key { .. } => TlsFile::Key,
        }
    }
}

/// One certificate's files, resolved, and the names it answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    /// The PEM certificate chain.
    pub cert: PathBuf,
    /// The PEM private key.
    pub key: PathBuf,
    /// The SNI names it answers (lower-case, `*.` for one label); empty for the
    /// default.
    pub names: Vec<String>,
}

/// A policy's certificates, with paths resolved against the policy's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// In the policy's order.
    pub certificates: Vec<CertFiles>,
    /// The index of the certificate for names no other answers.
    pub default: usize,
}

impl TlsFiles {
    /// `spec`'s files, relative paths taken from `base` (the policy file's directory).
    pub fn from_spec(spec: &ProxyTls, base: &Path) -> TlsFiles {
        TlsFiles {
            certificates: spec
                .certificates
                .iter()
                .map(|c| CertFiles {
                    cert: base.join(&c.cert),
                    key: base.join(&c.key),
                    names: c.names.clone(),
                })
                .collect(),
            default: spec.default_index(),
        }
    }

    /// Reads and checks every certificate: the index of the first that fails, and why.
    pub fn check(&self) -> Result<(), (usize, TlsError)> {
        self.load().map(|_| ())
    }

    fn load(&self) -> Result<Certs, (usize, TlsError)> {
        let mut keys = Vec::with_capacity(self.certificates.len());
        for (i, c) in self.certificates.iter().enumerate() {
            keys.push(Arc::new(load_pair(&c.cert, &c.key).map_err(|e| (i, e))?));
        }
        let mut exact = Vec::new();
        let mut wildcard = Vec::new();
        for (c, key) in self.certificates.iter().zip(&keys) {
            for name in &c.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.push((parent.to_string(), key.clone())),
                    None => exact.push((name.clone(), key.clone())),
                }
            }
        }
        let default = keys
            .get(self.default)
            .or(keys.first())
            .cloned()
            .ok_or_else(|| {
                (
                    0,
                    TlsError::Parse {
                        which: TlsFile::Cert,
                        path: PathBuf::new(),
                        detail: "no certificate".into(),
                    },
                )
            })?;
        Ok(Certs {
            exact,
            wildcard,
            default,
        })
    }

    /// The files' stamps (modification time, length, inode), `None` for one that
    /// cannot be read.
    fn stamps(&self) -> Vec<Option<Stamp>> {
        use std::os::unix::fs::MetadataExt;
        self.certificates
            .iter()
            .flat_map(|c| [&c.cert, &c.key])
            .map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok(), m.len(), m.ino()))
            })
            .collect()
    }
}

impl From<&super::plane::TlsState> for TlsFiles {
    fn from(s: &super::plane::TlsState) -> Self {
        TlsFiles {
            certificates: s
                .certificates
                .iter()
                .map(|c| CertFiles {
                    cert: c.cert.clone(),
                    key: c.key.clone(),
                    names: c.names.clone(),
                })
                .collect(),
            default: s.default,
        }
    }
}

impl From<&TlsFiles> for super::plane::TlsState {
    fn from(f: &TlsFiles) -> Self {
        super::plane::TlsState {
            certificates: f
                .certificates
                .iter()
                .map(|c| super::plane::TlsCertState {
                    cert: std::path::absolute(&c.cert).unwrap_or_else(|_| c.cert.clone()),
                    key: std::path::absolute(&c.key).unwrap_or_else(|_| c.key.clone()),
                    names: c.names.clone(),
                })
                .collect(),
            default: f.default,
        }
    }
}

type Stamp = (Option<std::time::SystemTime>, u64, u64);

/// Reads one chain and its key and checks that they belong together.
fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |which: TlsFile, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            which,
            path: path.to_path_buf(),
            source,
        })
    };
    let (cert_pem, key_pem) = (read(TlsFile::Cert, cert)?, read(TlsFile::Key, key)?);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Parse {
            which: TlsFile::Cert,
            path: cert.to_path_buf(),
            detail: format!("not a PEM certificate chain ({e})"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Parse {
            which: TlsFile::Cert,
            path: cert.to_path_buf(),
            detail: "no `BEGIN CERTIFICATE` block: give the PEM certificate chain, leaf first"
                .into(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Parse {
        which: TlsFile::Key,
        path: key.to_path_buf(),
        detail: format!("no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let certified =
        CertifiedKey::from_der(chain, private, &provider).map_err(|e| TlsError::Key {
            key: key.to_path_buf(),
            detail: match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "this key does not match the certificate in {}",
                    cert.display()
                ),
                other => format!("not a usable private key ({other})"),
            },
        })?;
    Ok(certified)
}

/// The certificates in force: looked up by exact name, then by parent for `*.`
/// names, then the default.
#[derive(Debug)]
struct Certs {
    exact: Vec<(String, Arc<CertifiedKey>)>,
    /// `*.example.com` as `example.com`.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl Certs {
    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        // rustls hands SNI over lower-case, without a trailing dot.
        if let Some(name) = sni {
            if let Some((_, k)) = self.exact.iter().find(|(n, _)| n == name) {
                return k.clone();
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some((_, k)) = self.wildcard.iter().find(|(n, _)| n == parent)
            {
                return k.clone();
            }
        }
        self.default.clone()
    }
}

/// The resolver rustls asks at each handshake: one read of the lock.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<Certs>>,
}

impl Resolver {
    fn current(&self) -> Arc<Certs> {
        match self.current.read() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().pick(hello.server_name()))
    }
}

/// Terminates TLS for one proxy: the acceptor, the certificates in force and what
/// was counted.
pub struct TlsTerminator {
    files: TlsFiles,
    resolver: Arc<Resolver>,
    acceptor: tokio_rustls::TlsAcceptor,
    /// The files' stamps at the last reload attempt, good or bad (a bad file is
    /// reported once, not at every poll).
    stamps: Mutex<Vec<Option<Stamp>>>,
    poll_every: Duration,
    handshake_failures: AtomicU64,
    reloads: AtomicU64,
    failed_reloads: AtomicU64,
}

impl std::fmt::Debug for TlsTerminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTerminator")
            .field("files", &self.files)
            .field("poll_every", &self.poll_every)
            .finish_non_exhaustive()
    }
}

impl TlsTerminator {
    /// Loads `files`; refuses when any certificate cannot be used.
    pub fn new(files: TlsFiles) -> Result<TlsTerminator, (usize, TlsError)> {
        let stamps = files.stamps();
        let certs = files.load()?;
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(certs)),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| {
            (
                0,
                TlsError::Parse {
                    which: TlsFile::Cert,
                    path: PathBuf::new(),
                    detail: e.to_string(),
                },
            )
        })?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(TlsTerminator {
            files,
            resolver,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            stamps: Mutex::new(stamps),
            poll_every: POLL_EVERY,
            handshake_failures: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            failed_reloads: AtomicU64::new(0),
        })
    }

    /// Checks the files every `every` instead of [`POLL_EVERY`].
    pub fn poll_every(mut self, every: Duration) -> TlsTerminator {
        self.poll_every = every.max(Duration::from_millis(10));
        self
    }

    /// Reads the files again and puts them in force; on failure keeps the
    /// certificates in force, logs a warning and returns why.
    pub fn reload(&self) -> Result<(), (usize, TlsError)> {
        let stamps = self.files.stamps();
        let loaded = self.files.load();
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) = stamps;
        match loaded {
            Ok(certs) => {
                *self
                    .resolver
                    .current
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = Arc::new(certs);
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!("proxy TLS certificates reloaded");
                Ok(())
            }
            Err((i, e)) => {
                self.failed_reloads.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(certificate = i, error = %e, "proxy TLS reload failed; the certificates in force stay");
                Err((i, e))
            }
        }
    }

    /// Reloads when a file's stamp changed since the last attempt; whether it did.
    pub fn reload_if_changed(&self) -> bool {
        let now = self.files.stamps();
        let same = *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) == now;
        if same {
            return false;
        }
        let _ = self.reload();
        true
    }

    /// Polls the files until the returned task is aborted.
    pub(super) fn watch(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(self.poll_every);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                self.reload_if_changed();
            }
        })
    }

    pub(super) fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    pub(super) fn count_failure(&self) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Handshakes that failed or timed out so far (never a version's error).
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::Relaxed)
    }

    /// Reloads that put new certificates in force so far.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Reloads that failed (and kept the certificates in force) so far.
    pub fn failed_reloads(&self) -> u64 {
        self.failed_reloads.load(Ordering::Relaxed)
    }
}
