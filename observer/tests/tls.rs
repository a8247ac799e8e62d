//! TLS on the Observer API (a node's `flows.tls`, the relay's listener), over real gRPC
//! connections with the client generated from the protos: a throwaway CA made with the
//! `openssl` command, a server certificate for one name and a client certificate, and the
//! server on a unix socket (TLS runs over any stream; no network is needed).

use std::path::{Path, PathBuf};
use std::process::Command;

use sluice_observer::pb::observer::ServerStatusRequest;
use sluice_observer::pb::observer::observer_client::ObserverClient;
use sluice_observer::server::Hub;
use sluice_observer::tls::ClientFiles;

const NAME: &str = "node-1.sluice.test";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (cargo xtask setup installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// ca.pem; server.pem/.key for NAME; client.pem/.key: all signed by the CA.
fn pki(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=sluice test CA",
            "-days",
            "1",
        ],
    );
    for (who, ext) in
        [("server", format!("subjectAltName=DNS:{NAME}")), ("client", "extendedKeyUsage=clientAuth".to_string())]
    {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                &format!("/CN={who}"),
            ],
        );
        std::fs::write(dir.join(format!("{who}.ext")), format!("{ext}\n")).expect("ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{who}.pem"),
                "-days",
                "1",
                "-extfile",
                &format!("{who}.ext"),
            ],
        );
    }
}

async fn serve(hub: &std::sync::Arc<Hub>, dir: &Path, mutual: bool) -> PathBuf {
    let tls = sluice_observer::tls::server(
        &dir.join("server.pem"),
        &dir.join("server.key"),
        mutual.then(|| dir.join("ca.pem")).as_deref(),
    )
    .expect("server TLS");
    let router = hub.router_tls(tls).await.expect("router");
    let path = dir.join(if mutual { "mutual.sock" } else { "tls.sock" });
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    tokio::spawn(async move {
        let _ = router.serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)).await;
    });
    path
}

/// ServerStatus over `sock`, as a client with `tls` (None: plaintext) dialling NAME.
async fn status(sock: &Path, tls: Option<ClientFiles>) -> Result<u64, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut e = tonic::transport::Endpoint::from_shared(format!("{scheme}://{NAME}")).map_err(|e| e.to_string())?;
    if let Some(t) = tls {
        e = e.tls_config(t.config(NAME).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let p = sock.to_path_buf();
    let ch = e
        .connect_with_connector(tower::service_fn(move |_| {
            let p = p.clone();
            async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(p).await?)) }
        }))
        .await
        .map_err(|e| format!("{e:?}"))?;
    let st = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        ObserverClient::new(ch).server_status(ServerStatusRequest {}),
    )
    .await
    .map_err(|_| "timed out".to_string())?
    .map_err(|s| format!("{s:?}"))?;
    Ok(st.into_inner().max_flows)
}

#[tokio::test]
async fn the_observer_speaks_tls_and_checks_names_and_client_certificates() {
    let dir = tempfile::tempdir().expect("tmp");
    pki(dir.path());
    let d = dir.path();
    let hub = Hub::new("node-1", "tcp", 100, Vec::new());
    let files = |name: Option<&str>, client: bool| ClientFiles {
        ca_file: d.join("ca.pem"),
        server_name: name.map(str::to_string),
        cert_file: client.then(|| d.join("client.pem")),
        key_file: client.then(|| d.join("client.key")),
    };
    // Server certificate only.
    let sock = serve(&hub, d, false).await;
    assert_eq!(status(&sock, Some(files(None, false))).await, Ok(100), "a client that trusts the CA");
    let wrong = status(&sock, Some(files(Some("node-2.sluice.test"), false))).await;
    assert!(wrong.is_err(), "a certificate for another name is refused: {wrong:?}");
    assert!(status(&sock, None).await.is_err(), "plaintext is not served on a TLS listener");
    // Mutual TLS: a client without a certificate is refused, one with a certificate the CA signed is served.
    let sock = serve(&hub, d, true).await;
    assert!(status(&sock, Some(files(None, false))).await.is_err(), "no client certificate");
    assert_eq!(status(&sock, Some(files(None, true))).await, Ok(100));
}
