//! Users of the admin API and the console: roles, passwords (Argon2id hashes) and API tokens,
//! and [`required_role`], the role a call needs, which a parent control applies to the calls it
//! forwards to a child (the API states the same roles on its routes).
//!
//! Pure data: the binary stores a [`Users`] as JSON and keeps sessions in memory.

use std::collections::BTreeMap;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};

use crate::access::check_name;

/// What a user may do. Ordered: each role can do everything the ones before it can.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything except the user list.
    Viewer,
    /// Also creates and deletes volumes and runs tasks.
    Operator,
    /// Also manages users, clients, groups and child controls.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = UserError;
    fn from_str(s: &str) -> Result<Self, UserError> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(UserError::Invalid(format!("role {other:?}: use viewer, operator or admin"))),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    Invalid(String),
    #[error("no user {0:?}")]
    NoUser(String),
    #[error("user {0:?} already exists")]
    Exists(String),
    #[error("user {0:?} has no token {1:?}")]
    NoToken(String, String),
    #[error("{0:?} is the last admin; make another user admin first")]
    LastAdmin(String),
    #[error("password hashing: {0}")]
    Hash(String),
}

/// An API token, stored as its BLAKE3 hash: the token itself is shown once, when issued.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: String,
    pub label: String,
    pub hash: String,
    pub created_unix_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// PHC string: `$argon2id$v=19$m=...,t=...,p=...$salt$hash`.
    pub password_hash: String,
    #[serde(default)]
    pub tokens: Vec<ApiToken>,
}

/// Every user, by name.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Users {
    pub users: BTreeMap<String, User>,
}

/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 8;
/// Prefix of API tokens, so that a leaked one is recognisable in a scan.
pub const TOKEN_PREFIX: &str = "cleave_";

/// Hashes a password with Argon2id (default parameters) and a fresh salt.
pub fn hash_password(password: &str, salt: &[u8; 16]) -> Result<String, UserError> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(UserError::Invalid(format!("a password needs at least {MIN_PASSWORD} characters")));
    }
    let salt = SaltString::encode_b64(salt).map_err(|e| UserError::Hash(e.to_string()))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| UserError::Hash(e.to_string()))?
        .to_string())
}

/// Whether `password` matches a PHC hash. A malformed hash matches nothing.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// Hash under which a token (or session id) is kept: never the secret itself.
pub fn token_hash(token: &str) -> String {
    hex::encode(blake3::hash(token.as_bytes()).as_bytes())
}

impl Users {
    pub fn add(&mut self, name: &str, role: Role, password_hash: String) -> Result<(), UserError> {
        check_name(name).map_err(|e| UserError::Invalid(e.to_string()))?;
        if self.users.contains_key(name) {
            return Err(UserError::Exists(name.to_string()));
        }
        self.users.insert(name.to_string(), User { name: name.to_string(), role, password_hash, tokens: Vec::new() });
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<&User, UserError> {
        self.users.get(name).ok_or_else(|| UserError::NoUser(name.to_string()))
    }

    fn get_mut(&mut self, name: &str) -> Result<&mut User, UserError> {
        self.users.get_mut(name).ok_or_else(|| UserError::NoUser(name.to_string()))
    }

    fn admins(&self) -> usize {
        self.users.values().filter(|u| u.role == Role::Admin).count()
    }

    /// Removes a user and its tokens; the last admin stays.
    pub fn remove(&mut self, name: &str) -> Result<(), UserError> {
        if self.get(name)?.role == Role::Admin && self.admins() == 1 {
            return Err(UserError::LastAdmin(name.to_string()));
        }
        self.users.remove(name);
        Ok(())
    }

    /// Changes a user's role; the last admin keeps its role.
    pub fn set_role(&mut self, name: &str, role: Role) -> Result<(), UserError> {
        if role != Role::Admin && self.get(name)?.role == Role::Admin && self.admins() == 1 {
            return Err(UserError::LastAdmin(name.to_string()));
        }
        self.get_mut(name)?.role = role;
        Ok(())
    }

    pub fn set_password_hash(&mut self, name: &str, password_hash: String) -> Result<(), UserError> {
        self.get_mut(name)?.password_hash = password_hash;
        Ok(())
    }

    /// Records a token issued to `name` (the caller made `secret` and shows it once).
    pub fn add_token(&mut self, name: &str, label: &str, secret: &str, now_ms: u64) -> Result<ApiToken, UserError> {
        let user = self.get_mut(name)?;
        let hash = token_hash(secret);
        let t = ApiToken { id: hash[..12].to_string(), label: label.to_string(), hash, created_unix_ms: now_ms };
        user.tokens.push(t.clone());
        Ok(t)
    }

    pub fn revoke_token(&mut self, name: &str, id: &str) -> Result<(), UserError> {
        let user = self.get_mut(name)?;
        let before = user.tokens.len();
        user.tokens.retain(|t| t.id != id);
        if user.tokens.len() == before {
            return Err(UserError::NoToken(name.to_string(), id.to_string()));
        }
        Ok(())
    }

    /// The user holding an API token (constant-time comparison of hashes).
    pub fn by_token(&self, secret: &str) -> Option<&User> {
        if !secret.starts_with(TOKEN_PREFIX) {
            return None;
        }
        let hash = token_hash(secret);
        self.users
            .values()
            .find(|u| u.tokens.iter().any(|t| cleave_split::constant_time_eq(t.hash.as_bytes(), hash.as_bytes())))
    }
}

/// The role a call needs: `method` and `path` as the HTTP request has them (path without query,
/// still percent-encoded).
///
/// - reading is for viewers, except the user list and the webhook (admins);
/// - one's own session, password and tokens are for every user;
/// - volumes and tasks are changed by operators;
/// - everything else (clients, groups, users, the webhook, child controls) is changed by admins;
/// - a call forwarded to a child control needs what the same call needs at the child.
///
/// The policy looks at the path as the handlers see it, percent-decoded. A path that could
/// name something else further on (a dot segment, a `%` left after decoding, which a child
/// would decode again, or any character that names never use) needs an admin.
pub fn required_role(method: &str, path: &str) -> Role {
    let read = matches!(method, "GET" | "HEAD");
    match decoded_segments(path) {
        Some(parts) => {
            let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
            let rest = parts.strip_prefix(&["api", "v1"][..]).unwrap_or(&parts);
            role_for(read, rest)
        }
        None => Role::Admin,
    }
}

/// Whether every segment of a request path, percent-decoded once, is plain (letters, digits,
/// `.`, `_`, `-`, `~`, and neither `.` nor `..`). Routes check their roles only on such paths;
/// any other spelling is for admins alone.
pub fn plain_path(path: &str) -> bool {
    decoded_segments(path).is_some()
}

/// The policy on the segments after `/api/v1`.
fn role_for(read: bool, parts: &[&str]) -> Role {
    match parts {
        // `/controls/{id}/api/{path...}`: the child's own rule, and at least what reading the tree needs.
        ["controls", _, "api", inner @ ..] => role_for(read, inner).max(Role::Viewer),
        ["me", ..] | ["logout"] => Role::Viewer,
        // The webhook's URL may carry the receiver's token: admins only, reading included.
        ["users", ..] | ["webhook", ..] => Role::Admin,
        _ if read => Role::Viewer,
        ["volumes", ..] | ["tasks", ..] => Role::Operator,
        _ => Role::Admin,
    }
}

/// The non-empty segments of a request path, percent-decoded once, as the router's extractors
/// decode them. `None` when any of them is suspect (see [`required_role`]).
fn decoded_segments(path: &str) -> Option<Vec<String>> {
    let decoded = String::from_utf8(percent_decode(path.as_bytes())?).ok()?;
    let parts: Vec<String> = decoded.split('/').filter(|p| !p.is_empty()).map(str::to_string).collect();
    let plain = |p: &String| {
        p != "." && p != ".." && p.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'~'))
    };
    parts.iter().all(plain).then_some(parts)
}

/// `%XX` escapes replaced by their bytes; `None` for a malformed escape.
fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        let mut u = Users::default();
        u.add("alice", Role::Admin, hash_password("correct horse", &[1; 16]).unwrap()).unwrap();
        u.add("bob", Role::Viewer, hash_password("battery staple", &[2; 16]).unwrap()).unwrap();
        u
    }

    #[test]
    fn passwords_verify_only_themselves() {
        let u = users();
        let h = &u.get("alice").unwrap().password_hash;
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse", h));
        assert!(!verify_password("correct horsf", h));
        assert!(!verify_password("correct horse", "not a hash"));
        assert!(matches!(hash_password("short", &[0; 16]), Err(UserError::Invalid(_))));
    }

    #[test]
    fn tokens_are_stored_hashed_and_revocable() {
        let mut u = users();
        let secret = format!("{TOKEN_PREFIX}{}", "ab".repeat(32));
        let t = u.add_token("bob", "ci", &secret, 5).unwrap();
        assert_ne!(t.hash, secret);
        assert!(!serde_json::to_string(&u).unwrap().contains(&secret));
        assert_eq!(u.by_token(&secret).unwrap().name, "bob");
        assert!(u.by_token(&format!("{TOKEN_PREFIX}{}", "ac".repeat(32))).is_none());
        assert!(u.by_token("").is_none());
        u.revoke_token("bob", &t.id).unwrap();
        assert!(u.by_token(&secret).is_none());
        assert!(matches!(u.revoke_token("bob", &t.id), Err(UserError::NoToken(..))));
    }

    #[test]
    fn the_last_admin_stays() {
        let mut u = users();
        assert!(matches!(u.remove("alice"), Err(UserError::LastAdmin(_))));
        assert!(matches!(u.set_role("alice", Role::Operator), Err(UserError::LastAdmin(_))));
        u.set_role("bob", Role::Admin).unwrap();
        u.set_role("alice", Role::Operator).unwrap();
        u.remove("alice").unwrap();
        assert!(matches!(u.add("bob", Role::Viewer, String::new()), Err(UserError::Exists(_))));
        assert!(matches!(u.add("../x", Role::Viewer, String::new()), Err(UserError::Invalid(_))));
    }

    #[test]
    fn policy() {
        use Role::*;
        let cases = [
            ("GET", "/api/v1/volumes", Viewer),
            ("GET", "/api/v1/nodes", Viewer),
            ("HEAD", "/api/v1/tasks/3", Viewer),
            ("GET", "/api/v1/users", Admin),
            ("GET", "/api/v1/me", Viewer),
            ("POST", "/api/v1/me/tokens", Viewer),
            ("PUT", "/api/v1/me/password", Viewer),
            ("POST", "/api/v1/logout", Viewer),
            ("POST", "/api/v1/volumes", Operator),
            ("DELETE", "/api/v1/volumes/a", Operator),
            ("POST", "/api/v1/volumes/a/scrub", Operator),
            ("POST", "/api/v1/tasks", Operator),
            ("POST", "/api/v1/clients", Admin),
            ("DELETE", "/api/v1/groups/g", Admin),
            ("PUT", "/api/v1/groups/g/volumes/v", Admin),
            ("POST", "/api/v1/users", Admin),
            ("DELETE", "/api/v1/users/bob/tokens/x", Admin),
            ("GET", "/api/v1/controls/east/api/volumes", Viewer),
            ("POST", "/api/v1/controls/east/api/volumes", Operator),
            ("GET", "/api/v1/controls/east/api/users", Admin),
            ("POST", "/api/v1/controls/east/api/controls/x/api/groups", Admin),
            ("PATCH", "/api/v1/anything", Admin),
            ("POST", "/api/v1/volumes/../users", Admin),
        ];
        for (m, p, want) in cases {
            assert_eq!(required_role(m, p), want, "{m} {p}");
        }
    }

    #[test]
    fn encoded_paths_get_the_policy_of_what_they_decode_to() {
        use Role::*;
        let cases = [
            ("GET", "/api/v1/user%73", Admin),
            ("GET", "/api/v1/%75%73%65%72%73", Admin),
            ("GET", "/api/v1/controls/east/api/user%73", Admin),
            ("GET", "/api/v1/controls/east/api/user%2573", Admin),
            ("GET", "/api/v1/controls/east/api/users%3Fx", Admin),
            ("GET", "/api/v1/controls/east/api/users%23x", Admin),
            ("GET", "/api/v1/controls/east/api/volumes%2F..%2Fusers", Admin),
            ("GET", "/api/v1/controls/east/api/volumes/%2e%2e/users", Admin),
            ("GET", "/api/v1/volumes/bad%zz", Admin),
            ("GET", "/api/v1/volumes/%ff", Admin),
            ("GET", "/api/v1/volumes/dem%6F", Viewer),
            ("GET", "/api/v1/controls/east/api/volumes/dem%6F", Viewer),
            ("POST", "/api/v1/volume%73", Operator),
            ("POST", "/api/v1/controls/east/api/group%73", Admin),
        ];
        for (m, p, want) in cases {
            assert_eq!(required_role(m, p), want, "{m} {p}");
        }
    }
}
