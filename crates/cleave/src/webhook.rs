//! The webhook's HTTP client: what the gateway posts events with (`cleave_gateway::webhook`).

use cleave_gateway::webhook::{Headers, Poster, TIMEOUT};

/// ureq, blocking (the gateway calls it on a blocking thread), with the web PKI's roots for
/// https.
pub struct HttpPoster {
    agent: ureq::Agent,
}

impl HttpPoster {
    pub fn new() -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(TIMEOUT)
            .timeout(TIMEOUT)
            // A redirect is a failure: the body and its signature go to the URL given, only.
            .redirects(0)
            .user_agent(concat!("cleave-webhook/", env!("CARGO_PKG_VERSION")))
            .build();
        HttpPoster { agent }
    }
}

impl Poster for HttpPoster {
    fn post(&self, url: &str, headers: &Headers, body: &[u8]) -> Result<(), String> {
        let mut req = self.agent.post(url);
        for (name, value) in headers {
            req = req.set(name, value);
        }
        match req.send_bytes(body) {
            Ok(r) if (200..300).contains(&r.status()) => Ok(()),
            Ok(r) => Err(format!("answered {}", r.status())),
            Err(ureq::Error::Status(code, _)) => Err(format!("answered {code}")),
            // Not the error's own text: it starts with the whole URL.
            Err(ureq::Error::Transport(t)) => {
                let message = t.message().map(|m| format!(": {m}")).unwrap_or_default();
                let source = std::error::Error::source(&t).map(|s| format!(": {s}")).unwrap_or_default();
                Err(format!("{}{message}{source}", t.kind()))
            }
        }
    }
}
