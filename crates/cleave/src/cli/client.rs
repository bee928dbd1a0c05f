//! The CLI side of the admin API.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use cleave_api::model::ErrorBody;
use serde::de::DeserializeOwned;
use serde::Serialize;

// How the CLI finds the server. (A plain comment: a doc comment here would become the
// description of every subcommand that flattens this and has none of its own.)
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// URL of the server's admin API (`cleave serve --http`).
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080", env = "CLEAVE_SERVER")]
    pub server: String,
    /// File holding the bearer token, read when CLEAVE_TOKEN is not set (`admin.token` in the
    /// server's data directory, or a token from `cleave user token`).
    #[arg(long, global = true, default_value = "./cleave-data/admin.token")]
    pub token_file: PathBuf,
    /// The CA certificate to trust for an https:// server (default: tls/ca.crt beside the
    /// token file, as in the server's data directory).
    #[arg(long, global = true, env = "CLEAVE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

/// A TLS client configuration that trusts only control's CA.
fn tls_trusting(ca_file: &std::path::Path) -> Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca_file)
        .with_context(|| format!("reading the CA certificate {}", ca_file.display()))?
    {
        roots.add(cert.with_context(|| format!("parsing {}", ca_file.display()))?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(args: &ServerArgs) -> Result<Self> {
        let token = match std::env::var("CLEAVE_TOKEN") {
            Ok(t) if !t.is_empty() => t,
            _ => std::fs::read_to_string(&args.token_file)
                .with_context(|| {
                    format!(
                        "reading the token from {} (give the server's DIR/admin.token with --token-file, \
                         or set CLEAVE_TOKEN)",
                        args.token_file.display()
                    )
                })?
                .trim()
                .to_string(),
        };
        let mut agent = ureq::AgentBuilder::new().timeout_read(std::time::Duration::from_secs(3600));
        if args.server.starts_with("https://") {
            let beside = args.token_file.parent().map(|d| d.join("tls").join("ca.crt"));
            let ca = args.ca_file.clone().or(beside).context("https needs --ca-file (the server's DIR/tls/ca.crt)")?;
            agent = agent.tls_config(tls_trusting(&ca)?);
        }
        let agent = agent.build();
        Ok(Client { base: args.server.trim_end_matches('/').to_string(), token, agent })
    }

    /// One call: the answer's body (empty for 204), or the server's refusal as an error.
    fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Result<String> {
        let url = format!("{}/api/v1{path}", self.base);
        let req = self.agent.request(method, &url).set("Authorization", &format!("Bearer {}", self.token));
        let result = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match result {
            Ok(resp) if resp.status() == 204 => Ok(String::new()),
            Ok(resp) => resp.into_string().context("reading the server's answer"),
            Err(ureq::Error::Status(code, resp)) => {
                let msg = resp.into_json::<ErrorBody>().map(|b| b.error).unwrap_or_else(|_| "no detail".to_string());
                bail!("server answered {code}: {msg}")
            }
            Err(ureq::Error::Transport(t)) => bail!(
                "cannot reach the server at {} ({}): is it running there? Point the CLI at it with \
                 --server URL or CLEAVE_SERVER",
                self.base,
                transport_reason(&t)
            ),
        }
    }

    /// An answer as the type the API documents for it.
    fn parse<T: DeserializeOwned>(text: &str) -> Result<T> {
        if text.trim().is_empty() {
            bail!("empty answer");
        }
        serde_json::from_str(text).context("parsing the server's answer")
    }

    fn body(body: &impl Serialize) -> Result<Option<serde_json::Value>> {
        Ok(Some(serde_json::to_value(body).context("encoding the request")?))
    }

    /// `GET`, answered with a `T`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Self::parse(&self.call("GET", path, None)?)
    }
    /// `POST`, answered with a `T`.
    pub fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        Self::parse(&self.call("POST", path, Self::body(body)?)?)
    }
    /// `POST`, whose answer says nothing more than its status.
    pub fn post_only(&self, path: &str, body: &impl Serialize) -> Result<()> {
        self.call("POST", path, Self::body(body)?).map(|_| ())
    }
    /// `PUT`, answered with a `T`.
    pub fn put<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        Self::parse(&self.call("PUT", path, Self::body(body)?)?)
    }
    /// `PUT`, whose answer says nothing more than its status.
    pub fn put_only(&self, path: &str, body: &impl Serialize) -> Result<()> {
        self.call("PUT", path, Self::body(body)?).map(|_| ())
    }
    /// `DELETE`, whose answer (if any) says nothing more than its status.
    pub fn delete(&self, path: &str) -> Result<()> {
        self.call("DELETE", path, None).map(|_| ())
    }
}

/// Why a call got no answer, in a few words (the full chain names the URL again).
fn transport_reason(t: &ureq::Transport) -> String {
    let io = std::error::Error::source(t).and_then(|e| e.downcast_ref::<std::io::Error>());
    match (t.kind(), io) {
        (_, Some(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        (ureq::ErrorKind::Dns, _) => "unknown host".into(),
        (_, Some(e)) => e.to_string(),
        (kind, None) => t.message().map_or_else(|| kind.to_string(), |m| format!("{kind}: {m}")),
    }
}
