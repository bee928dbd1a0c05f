//! Users of the admin API and the console: the store (key `users` of the configuration
//! database), login sessions (in memory; the API carries them in a cookie), API tokens, and
//! who a caller is ([`Principal`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use cleave_control::users::{hash_password, token_hash, verify_password, ApiToken, Role, User, Users, TOKEN_PREFIX};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::data_dir::{random_hex, write_private, DataDir, Stored};
use crate::error::GatewayError;

/// A login lasts this long.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// First administrator, created on first run with the password in `DIR/admin.password`.
pub const FIRST_ADMIN: &str = "admin";

/// Who is calling, and how they proved it.
#[derive(Clone, Debug)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub via: Via,
}

impl Principal {
    /// Whether `given` is this session's CSRF token (compared in constant time); false for
    /// callers without a session.
    pub fn csrf_matches(&self, given: &str) -> bool {
        match &self.via {
            Via::Session(csrf) => cleave_split::constant_time_eq(given.as_bytes(), csrf.as_bytes()),
            _ => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// `DIR/admin.token`.
    AdminToken,
    /// A parent control's derived token (docs/control.md).
    Parent,
    /// A user's API token.
    ApiToken,
    /// A console login; the value is the session's CSRF token.
    Session(String),
}

struct Session {
    user: String,
    csrf: String,
    expires: Instant,
}

/// Key of the users in the configuration database.
const KEY: &str = "users";

pub struct UserStore {
    users: Stored<Users>,
    /// Keyed by the hash of the session id: a memory dump gives no usable cookie.
    sessions: Mutex<HashMap<String, Session>>,
    /// Failed logins by user name: (count, first failure), over [`FAILURE_WINDOW`].
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

/// This many failed logins for one name within [`FAILURE_WINDOW`] close that name's login
/// until the window ends, whatever the password.
const MAX_FAILURES: u32 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

fn new_hash(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    cleave_split::keys::fill_random(&mut salt)?;
    Ok(hash_password(password, &salt)?)
}

impl UserStore {
    /// Loads the users. On first run, creates the user `admin` with a random password
    /// written to `DIR/admin.password` (mode 0600).
    pub fn load(data: &DataDir) -> Result<Self> {
        let users = Stored::load(data, KEY, || {
            let password = random_hex(12)?;
            let mut u = Users::default();
            u.add(FIRST_ADMIN, Role::Admin, new_hash(&password)?)?;
            write_private(&data.root.join("admin.password"), format!("{password}\n").as_bytes())?;
            Ok(u)
        })?;
        Ok(UserStore { users, sessions: Mutex::new(HashMap::new()), failures: Mutex::new(HashMap::new()) })
    }

    fn snapshot(&self) -> Users {
        self.users.snapshot()
    }

    /// Follows the changes other gateways of the appliance make.
    pub fn follow(&self) {
        self.users.follow();
    }

    /// Applies a change to the users; sessions of removed users end.
    fn update<T>(&self, f: impl FnMut(&mut Users) -> Result<T>) -> Result<T> {
        let out = self.users.update(f)?;
        // Sessions of removed users end now.
        let users = self.users.read();
        self.sessions.lock().expect("not poisoned").retain(|_, s| users.users.contains_key(&s.user));
        Ok(out)
    }

    /// The holder of an API token.
    pub fn by_token(&self, token: &str) -> Option<Principal> {
        let users = self.users.read();
        users.by_token(token).map(|u| Principal { name: u.name.clone(), role: u.role, via: Via::ApiToken })
    }

    /// The user of a live session, with the user's current role.
    pub fn by_session(&self, id: &str) -> Option<Principal> {
        let mut sessions = self.sessions.lock().expect("not poisoned");
        let key = token_hash(id);
        let s = sessions.get(&key)?;
        if s.expires < Instant::now() {
            sessions.remove(&key);
            return None;
        }
        let users = self.users.read();
        let u = users.users.get(&s.user)?;
        Some(Principal { name: u.name.clone(), role: u.role, via: Via::Session(s.csrf.clone()) })
    }

    /// Checks a password (Argon2id, off the async threads) and opens a session: (id, csrf, role).
    /// The caller has counted the attempt with [`UserStore::reserve_attempt`]; a success clears
    /// the count.
    pub async fn login(&self, name: &str, password: &str) -> Result<Option<(String, String, Role)>, GatewayError> {
        self.open_session(name, password).await.map_err(|e| GatewayError::Internal(e.to_string()))
    }

    async fn open_session(&self, name: &str, password: &str) -> Result<Option<(String, String, Role)>> {
        let user = self.snapshot().users.get(name).cloned();
        // An unknown name costs the same as a wrong password.
        let phc = match &user {
            Some(u) => u.password_hash.clone(),
            None => dummy_hash()?,
        };
        let password = zeroize::Zeroizing::new(password.to_string());
        let ok = tokio::task::spawn_blocking(move || verify_password(&password, &phc)).await?;
        let Some(user) = user.filter(|_| ok) else { return Ok(None) };
        self.failures.lock().expect("not poisoned").remove(name);
        let (id, csrf) = (random_hex(32)?, random_hex(16)?);
        let mut sessions = self.sessions.lock().expect("not poisoned");
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions.insert(
            token_hash(&id),
            Session { user: user.name.clone(), csrf: csrf.clone(), expires: now + SESSION_LIFETIME },
        );
        Ok(Some((id, csrf, user.role)))
    }

    /// Counts a login attempt for `name` as a failure before its password is checked, so that
    /// parallel guesses cannot all pass while the first ones are still being checked: at most
    /// [`MAX_FAILURES`] checks per name and window. `Err`: how long until `name` may try again.
    pub fn reserve_attempt(&self, name: &str) -> Result<(), Duration> {
        let mut failures = self.failures.lock().expect("not poisoned");
        if failures.len() > 10_000 {
            failures.retain(|_, (_, first)| first.elapsed() < FAILURE_WINDOW);
        }
        let entry = failures.entry(name.to_string()).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        if entry.0 >= MAX_FAILURES {
            return Err(FAILURE_WINDOW.saturating_sub(entry.1.elapsed()));
        }
        entry.0 += 1;
        Ok(())
    }

    pub fn logout(&self, id: &str) {
        self.sessions.lock().expect("not poisoned").remove(&token_hash(id));
    }

    /// A new API token for user `name`: the token, and its secret (shown once).
    pub fn issue_token(&self, name: &str, label: &str) -> Result<(ApiToken, String), GatewayError> {
        let secret = format!("{TOKEN_PREFIX}{}", random_hex(32)?);
        let t = self.update(|u| Ok(u.add_token(name, label, &secret, cleave_control::pool::now_ms())?))?;
        info!(user = %name, token = %t.id, "API token issued");
        Ok((t, secret))
    }

    pub fn revoke_token(&self, name: &str, id: &str) -> Result<(), GatewayError> {
        Ok(self.update(|u| Ok(u.revoke_token(name, id)?))?)
    }

    /// Every user, without secrets.
    pub fn list(&self) -> Vec<UserView> {
        self.snapshot().users.values().map(view).collect()
    }

    /// One user, without secrets.
    pub fn show(&self, name: &str) -> Result<UserView, GatewayError> {
        Ok(view(self.snapshot().get(name)?))
    }

    pub fn add(&self, name: &str, role: Role, password: &str) -> Result<UserView, GatewayError> {
        let hash = new_hash(password)?;
        self.update(|u| Ok(u.add(name, role, hash.clone())?))?;
        info!(user = %name, role = %role, "user added");
        self.show(name)
    }

    /// Changes a user's role, password, or both.
    pub fn change(&self, name: &str, role: Option<Role>, password: Option<&str>) -> Result<UserView, GatewayError> {
        let hash = password.map(new_hash).transpose()?;
        let password_changed = hash.is_some();
        self.update(|u| {
            if let Some(role) = role {
                u.set_role(name, role)?;
            }
            if let Some(h) = &hash {
                u.set_password_hash(name, h.clone())?;
            }
            u.get(name)?;
            Ok(())
        })?;
        info!(user = %name, role = ?role, password_changed, "user changed");
        self.show(name)
    }

    pub fn remove(&self, name: &str) -> Result<(), GatewayError> {
        self.update(|u| Ok(u.remove(name)?))?;
        info!(user = %name, "user removed");
        Ok(())
    }

    /// A user's own password change: the current password must be right.
    pub async fn change_own_password(&self, name: &str, current: &str, password: &str) -> Result<(), GatewayError> {
        let phc = self.snapshot().get(name)?.password_hash.clone();
        let current = zeroize::Zeroizing::new(current.to_string());
        let ok = tokio::task::spawn_blocking(move || verify_password(&current, &phc))
            .await
            .map_err(|e| GatewayError::Internal(e.to_string()))?;
        if !ok {
            return Err(GatewayError::Forbidden("the current password is wrong".into()));
        }
        let hash = new_hash(password)?;
        self.update(|u| Ok(u.set_password_hash(name, hash.clone())?))?;
        info!(user = %name, "password changed");
        Ok(())
    }
}

/// An Argon2id hash of a random password nobody knows, verified for unknown names.
fn dummy_hash() -> Result<String> {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(h) = DUMMY.get() {
        return Ok(h.clone());
    }
    let h = new_hash(&random_hex(16)?)?;
    Ok(DUMMY.get_or_init(|| h).clone())
}

/// An API token as listed: never its secret.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenView {
    pub id: String,
    pub label: String,
    pub created_unix_ms: u64,
}

/// A user as `GET /api/v1/users` shows it: never a password hash or a token secret.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserView {
    pub name: String,
    pub role: Role,
    pub tokens: Vec<TokenView>,
}

fn view(u: &User) -> UserView {
    UserView {
        name: u.name.clone(),
        role: u.role,
        tokens: u
            .tokens
            .iter()
            .map(|t| TokenView { id: t.id.clone(), label: t.label.clone(), created_unix_ms: t.created_unix_ms })
            .collect(),
    }
}
