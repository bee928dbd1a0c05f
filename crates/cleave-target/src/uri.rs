//! [`TargetUri`]: where a target is, parsed once. Configurations keep the string form
//! (`Display`, `FromStr` and serde all use it), so stored volumes read back unchanged.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::check_key;
use crate::TargetError;

/// A target's location, one variant per backend.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TargetUri {
    /// `file:///abs/path`: a local directory, the path taken literally (no percent-decoding).
    File(PathBuf),
    /// `s3://bucket/prefix?endpoint=URL&region=R`
    S3(S3Uri),
    /// `node://host:port`: a Cleave storage node.
    Node(String),
}

/// The parts of an `s3://` URI. It holds no credential: those come from the environment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct S3Uri {
    pub bucket: String,
    /// Every key lives below it: empty, or a valid key without a trailing '/'.
    pub prefix: String,
    /// An `http://` or `https://` server, without a trailing '/'; None: AWS itself.
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

impl TargetUri {
    /// A directory target. The path is used as given: make it absolute first.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        TargetUri::File(path.into())
    }

    /// A storage node at `addr` (`host:port`).
    pub fn node(addr: impl fmt::Display) -> Self {
        TargetUri::Node(addr.to_string())
    }

    /// The directory of a `file://` target.
    pub fn as_file(&self) -> Option<&Path> {
        match self {
            TargetUri::File(p) => Some(p),
            _ => None,
        }
    }

    /// The address of a `node://` target.
    pub fn as_node(&self) -> Option<&str> {
        match self {
            TargetUri::Node(a) => Some(a),
            _ => None,
        }
    }
}

impl fmt::Display for TargetUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetUri::File(p) => write!(f, "file://{}", p.display()),
            TargetUri::Node(a) => write!(f, "node://{a}"),
            TargetUri::S3(s) => {
                write!(f, "s3://{}", s.bucket)?;
                if !s.prefix.is_empty() {
                    write!(f, "/{}", s.prefix)?;
                }
                let mut sep = '?';
                for (k, v) in [("endpoint", &s.endpoint), ("region", &s.region)] {
                    if let Some(v) = v {
                        write!(f, "{sep}{k}={}", escape_query_value(v))?;
                        sep = '&';
                    }
                }
                Ok(())
            }
        }
    }
}

/// Only what would change how the query splits: the rest of a URL reads better as is.
fn escape_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '%' | '&' | '+' | '#' | '=' | ' ' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

impl FromStr for TargetUri {
    type Err = TargetError;

    /// Errors show the URI with any user-info and unknown parameter values masked, so a
    /// credential pasted into a URI does not end up in logs.
    fn from_str(uri: &str) -> Result<Self, TargetError> {
        let bad = |m: &str| TargetError::InvalidUri(format!("{}: {m}", redact_uri(uri)));
        if let Some(path) = uri.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("file:// needs an absolute path, as in file:///var/lib/cleave"));
            }
            if path.contains('\0') {
                return Err(bad("the path contains a NUL byte"));
            }
            return Ok(TargetUri::File(path.into()));
        }
        if uri.starts_with("s3://") {
            return parse_s3(uri).map(TargetUri::S3).map_err(|m| bad(&m));
        }
        if let Some(addr) = uri.strip_prefix("node://") {
            let addr = addr.trim_end_matches('/');
            if addr.is_empty() || addr.contains(['/', '?', '#', '@']) {
                return Err(bad("use node://host:port"));
            }
            return Ok(TargetUri::Node(addr.to_string()));
        }
        Err(bad("unknown scheme; use file:///path, s3://bucket/prefix or node://host:port"))
    }
}

/// The parts of `s3://bucket/prefix?endpoint=URL&region=R`, or why not.
fn parse_s3(uri: &str) -> Result<S3Uri, String> {
    let url = url::Url::parse(uri).map_err(|e| e.to_string())?;
    if url.scheme() != "s3" {
        return Err("not an s3:// URI".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials do not belong in the URI; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into());
    }
    if url.port().is_some() {
        return Err("s3://bucket takes no port; put the server in ?endpoint=".into());
    }
    if url.fragment().is_some() {
        return Err("unexpected #fragment".into());
    }
    let bucket = url.host_str().filter(|b| !b.is_empty()).ok_or("missing bucket")?.to_string();
    let prefix = url.path().trim_matches('/').to_string();
    if !prefix.is_empty() && check_key(&prefix).is_err() {
        return Err("the prefix must be a plain relative path (no '..', '//', '%', hidden parts)".into());
    }
    if prefix.contains('%') {
        return Err("the prefix must not need percent-encoding".into());
    }
    let (mut endpoint, mut region) = (None, None);
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "endpoint" => endpoint = Some(parse_endpoint(&v)?),
            "region" if !v.is_empty() => region = Some(v.into_owned()),
            other => return Err(format!("unknown parameter {other:?} (use endpoint, region)")),
        }
    }
    Ok(S3Uri { bucket, prefix, endpoint, region })
}

fn parse_endpoint(v: &str) -> Result<String, String> {
    let e = url::Url::parse(v).map_err(|e| format!("endpoint: {e}"))?;
    if !matches!(e.scheme(), "http" | "https") || e.host_str().is_none() {
        return Err("endpoint must be an http:// or https:// URL".into());
    }
    if !e.username().is_empty() || e.password().is_some() {
        return Err("credentials do not belong in the endpoint; use AWS_* variables".into());
    }
    Ok(v.trim_end_matches('/').to_string())
}

impl serde::Serialize for TargetUri {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TargetUri {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The URI for messages: user-info and the values of parameters other than `endpoint` and
/// `region` become `***`, since either may hold a credential.
pub(crate) fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        let lower = uri.to_ascii_lowercase();
        return if lower.contains(['@', '?']) || lower.contains("%40") { "***".to_string() } else { uri.to_string() };
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority_end = before_query.find('/').unwrap_or(before_query.len());
    let (authority, path) = before_query.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    let mut out = format!("{scheme}://{authority}{path}");
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if k == "endpoint" || k == "region" => format!("{k}={}", redact_uri(v)),
                Some((k, _)) => format!("{k}=***"),
                None => kv.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests;
