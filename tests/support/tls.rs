//! Test certificates made with the `openssl` command-line tool: a CA, server certificates
//! (valid, expired, for the wrong name), a client certificate, and an unrelated CA.
//!
//! Every key is EC P-256 (fast to make, accepted by Redis's OpenSSL and by rustls). The
//! extensions come from a config file written next to the certificates, so the system's
//! `openssl.cnf` plays no part.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::require;

/// A certificate and its private key (PEM files).
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Whether a peer trusting [`Certs::ca`] accepts this certificate for 127.0.0.1 by the
    /// chain and the validity period (the name is not part of it: Redis never checks it).
    pub chain_valid: bool,
}

/// The certificate set of one test, in its own temp dir (removed on drop).
pub struct Certs {
    pub dir: tempfile::TempDir,
    /// The CA every good certificate chains to.
    pub ca: PathBuf,
    /// SANs IP:127.0.0.1 and DNS:localhost; serverAuth and clientAuth (Redis presents its
    /// server certificate as the client certificate on replication and sentinel links).
    pub server: CertPair,
    /// A client certificate (clientAuth only), CN "rfp client".
    pub client: CertPair,
    /// Like `server`, but valid only from 2020-01-01 to 2021-01-01.
    pub expired: CertPair,
    /// Like `server`, but for DNS:wrong.example only (no IP SAN).
    pub wrong_name: CertPair,
    /// A server certificate for DNS:localhost only (no IP): good only when reached by name.
    pub localhost_only: CertPair,
    /// A second CA that signed nothing the servers use.
    pub other_ca: PathBuf,
    /// A server certificate (same SANs as `server`) signed by `other_ca`.
    pub other_server: CertPair,
    /// A client certificate signed by `other_ca`.
    pub other_client: CertPair,
}

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[wrong_name]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:wrong.example
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[localhost_only]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
# `openssl ca`, only for the expired certificate: it is the 3.0 tool that takes explicit
# -startdate/-enddate (x509 -days cannot go below -1 and has no not-before).
[ca]
default_ca = test_ca
[test_ca]
dir = .
database = ./index.txt
new_certs_dir = .
serial = ./serial
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
[any]
commonName = supplied
";

impl Certs {
    /// Makes the whole set, or prints why not and returns `None` (no `openssl`).
    pub fn generate() -> Option<Certs> {
        if !require("openssl") {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("rfp-certs-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        std::fs::write(d.join("openssl.cnf"), OPENSSL_CNF).expect("openssl.cnf");
        std::fs::write(d.join("index.txt"), "").expect("index.txt");
        std::fs::write(d.join("serial"), "1000\n").expect("serial");

        make_ca(d, "ca", "rfp test CA");
        make_ca(d, "other-ca", "unrelated CA");
        let server = leaf(d, "server", "localhost", "ca", "server", true);
        let client = leaf(d, "client", "rfp client", "ca", "client", true);
        let wrong_name = leaf(d, "wrong-name", "wrong.example", "ca", "wrong_name", true);
        let localhost_only = leaf(
            d,
            "localhost-only",
            "localhost",
            "ca",
            "localhost_only",
            true,
        );
        let other_server = leaf(d, "other-server", "localhost", "other-ca", "server", false);
        let other_client = leaf(d, "other-client", "rfp client", "other-ca", "client", false);
        // The expired one: same request as a server certificate, dates in the past.
        csr(d, "expired", "localhost");
        openssl(
            d,
            &[
                "ca",
                "-batch",
                "-config",
                "openssl.cnf",
                "-cert",
                "ca.crt",
                "-keyfile",
                "ca.key",
                "-in",
                "expired.csr",
                "-out",
                "expired.crt",
                "-extensions",
                "server",
                "-startdate",
                "20200101000000Z",
                "-enddate",
                "20210101000000Z",
                "-notext",
            ],
        );
        let expired = CertPair {
            cert: d.join("expired.crt"),
            key: d.join("expired.key"),
            chain_valid: false,
        };
        Some(Certs {
            ca: d.join("ca.crt"),
            other_ca: d.join("other-ca.crt"),
            server,
            client,
            expired,
            wrong_name,
            localhost_only,
            other_server,
            other_client,
            dir,
        })
    }

    /// `openssl verify -CAfile ca` of `cert`: Ok, or the tool's complaint.
    pub fn verify(&self, ca: &Path, cert: &Path) -> Result<(), String> {
        let out = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(ca)
            .arg(cert)
            .output()
            .expect("run openssl verify");
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `openssl x509 -noout -text` of `cert`.
    pub fn text(&self, cert: &Path) -> String {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(cert)
            .output()
            .expect("run openssl x509");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_ca(dir: &Path, name: &str, cn: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-config",
            "openssl.cnf",
            "-extensions",
            "v3_ca",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "3650",
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
}

fn csr(dir: &Path, name: &str, cn: &str) {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-nodes",
            "-config",
            "openssl.cnf",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
}

fn leaf(dir: &Path, name: &str, cn: &str, ca: &str, section: &str, by_main_ca: bool) -> CertPair {
    csr(dir, name, cn);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "365",
            "-sha256",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            section,
        ],
    );
    CertPair {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
        chain_valid: by_main_ca,
    }
}
