//! The CLI side of the admin API.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// How the CLI finds the server.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Admin API of the server.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080", env = "CLEAVE_SERVER")]
    pub server: String,
    /// File holding the bearer token (used when CLEAVE_TOKEN is not set).
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
                .with_context(|| format!("reading the token from {} (or set CLEAVE_TOKEN)", args.token_file.display()))?
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

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Option<Value>> {
        let url = format!("{}/api/v1{path}", self.base);
        let req = self.agent.request(method, &url).set("Authorization", &format!("Bearer {}", self.token));
        let result = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match result {
            Ok(resp) if resp.status() == 204 => Ok(None),
            Ok(resp) => {
                let text = resp.into_string().context("reading the server's answer")?;
                if text.trim().is_empty() {
                    return Ok(None);
                }
                Ok(Some(serde_json::from_str(&text).context("parsing the server's answer")?))
            }
            Err(ureq::Error::Status(code, resp)) => {
                let body: Value = resp.into_json().unwrap_or(Value::Null);
                let msg = body.get("error").and_then(|e| e.as_str()).unwrap_or("no detail").to_string();
                bail!("server answered {code}: {msg}")
            }
            Err(e) => bail!("cannot reach {url}: {e}"),
        }
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        self.call("GET", path, None)?.context("empty answer")
    }
    pub fn post(&self, path: &str, body: Value) -> Result<Option<Value>> {
        self.call("POST", path, Some(body))
    }
    pub fn put(&self, path: &str, body: Value) -> Result<Option<Value>> {
        self.call("PUT", path, Some(body))
    }
    pub fn delete(&self, path: &str) -> Result<()> {
        self.call("DELETE", path, None).map(|_| ())
    }
}
