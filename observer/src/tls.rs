//! TLS for the Observer API over TCP (a node's `flows.listen_address`, the relay's listener,
//! and the relay's and CLI's connections to them), from PEM files as Hubble takes them: the
//! server's certificate and key, optionally the CAs client certificates must chain to (mutual
//! TLS); a client's CA bundle, the name it expects the server's certificate to carry, and
//! optionally its own certificate and key.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path}: no PEM block in it (expected -----BEGIN {expected}-----)")]
    NotPem { what: &'static str, path: PathBuf, expected: &'static str },
    #[error("{what} given without {missing}: a certificate and its key go together")]
    Half { what: &'static str, missing: &'static str },
}

fn read_pem(what: &'static str, path: &Path, expected: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.into(), source })?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(TlsError::NotPem { what, path: path.into(), expected });
    }
    Ok(bytes)
}

fn identity(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    Ok(Identity::from_pem(
        read_pem("certificate file", cert, "CERTIFICATE")?,
        read_pem("key file", key, "PRIVATE KEY")?,
    ))
}

/// A server's TLS: its certificate chain and key; with `client_ca`, clients must present a
/// certificate signed by one of those CAs.
pub fn server(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerTlsConfig, TlsError> {
    let mut c = ServerTlsConfig::new().identity(identity(cert, key)?);
    if let Some(ca) = client_ca {
        c = c.client_ca_root(Certificate::from_pem(read_pem("client CA file", ca, "CERTIFICATE")?));
    }
    Ok(c)
}

/// How a client checks and presents itself.
#[derive(Debug, Clone, Default)]
pub struct ClientFiles {
    /// The CAs the server's certificate must chain to.
    pub ca_file: PathBuf,
    /// The name the server's certificate must carry; default: the host dialled.
    pub server_name: Option<String>,
    /// For servers that require client certificates.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl ClientFiles {
    /// The TLS config for a server dialled as `host` (the name checked unless `server_name`).
    pub fn config(&self, host: &str) -> Result<ClientTlsConfig, TlsError> {
        let ca = Certificate::from_pem(read_pem("CA file", &self.ca_file, "CERTIFICATE")?);
        let name = self.server_name.clone().unwrap_or_else(|| host.to_string());
        let mut c = ClientTlsConfig::new().ca_certificate(ca).domain_name(name);
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => c = c.identity(identity(cert, key)?),
            (Some(_), None) => return Err(TlsError::Half { what: "a client certificate", missing: "its key file" }),
            (None, Some(_)) => return Err(TlsError::Half { what: "a client key", missing: "its certificate file" }),
            (None, None) => {}
        }
        Ok(c)
    }
}

/// An endpoint for `HOST:PORT`: plaintext, or TLS checked against `tls` (the certificate must
/// carry the host's name unless the files name another). Not connected yet.
pub fn endpoint(address: &str, tls: Option<&ClientFiles>) -> Result<tonic::transport::Endpoint, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut e = tonic::transport::Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| format!("{e} (expected HOST:PORT)"))?;
    if let Some(t) = tls {
        e = e.tls_config(t.config(host_of(address)).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    Ok(e)
}

/// The host part of `HOST:PORT` (brackets of an IPv6 literal removed).
pub fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named_with_what_was_expected() {
        let dir = tempfile::tempdir().expect("tmp");
        let not_pem = dir.path().join("cert.der");
        std::fs::write(&not_pem, [0x30, 0x82]).expect("write");
        let e = server(&not_pem, &not_pem, None).expect_err("not PEM").to_string();
        assert!(e.contains("cert.der") && e.contains("BEGIN CERTIFICATE"), "{e}");
        let e = server(&dir.path().join("missing.pem"), &not_pem, None).expect_err("missing").to_string();
        assert!(e.starts_with("certificate file") && e.contains("missing.pem"), "{e}");
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n").expect("write");
        let half = ClientFiles { ca_file: pem, cert_file: Some(not_pem), ..Default::default() };
        assert!(half.config("node-1").expect_err("half").to_string().contains("its key file"));
    }

    #[test]
    fn the_host_of_an_address() {
        assert_eq!(host_of("198.51.100.11:4244"), "198.51.100.11");
        assert_eq!(host_of("node-1.example:4245"), "node-1.example");
        assert_eq!(host_of("[2001:db8::1]:4244"), "2001:db8::1");
    }
}
