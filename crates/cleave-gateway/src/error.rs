//! [`GatewayError`]: what a gateway call fails with, by kind. Each front end turns the kind
//! into its own answer (an HTTP status, an NBD errno) in one place; the errors of the
//! layers below are sorted into kinds here, once.

use cleave_control::access::AccessError;
use cleave_control::placement::{LayoutError, PlacementError};
use cleave_control::users::UserError;
use cleave_target::TargetError;
use cleave_volume::VolumeError;

/// Why a gateway call failed. The message is for people; the variant is for programs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// No such volume, task, group, client or user.
    #[error("{0}")]
    NotFound(String),
    /// The request collides with the state: it exists already, another gateway holds it.
    #[error("{0}")]
    Conflict(String),
    /// The request itself is wrong: a bad name, size, layout or target.
    #[error("{0}")]
    Invalid(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// Targets or metadata do not answer now; trying again later may work.
    #[error("{0}")]
    Unavailable(String),
    /// A fault of the gateway itself.
    #[error("{0}")]
    Internal(String),
}

/// A gateway call's result.
pub type Result<T, E = GatewayError> = std::result::Result<T, E>;

impl GatewayError {
    /// The same kind of error, its message prefixed with `what` (as `anyhow`'s context).
    pub fn context(self, what: impl std::fmt::Display) -> Self {
        self.map(|m| format!("{what}: {m}"))
    }

    /// The message, whatever the kind.
    pub fn message(&self) -> &str {
        match self {
            GatewayError::NotFound(m)
            | GatewayError::Conflict(m)
            | GatewayError::Invalid(m)
            | GatewayError::Forbidden(m)
            | GatewayError::Unavailable(m)
            | GatewayError::Internal(m) => m,
        }
    }

    fn map(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            GatewayError::NotFound(m) => GatewayError::NotFound(f(m)),
            GatewayError::Conflict(m) => GatewayError::Conflict(f(m)),
            GatewayError::Invalid(m) => GatewayError::Invalid(f(m)),
            GatewayError::Forbidden(m) => GatewayError::Forbidden(f(m)),
            GatewayError::Unavailable(m) => GatewayError::Unavailable(f(m)),
            GatewayError::Internal(m) => GatewayError::Internal(f(m)),
        }
    }

    /// This kind, with another message.
    fn with(&self, message: String) -> Self {
        self.clone().map(|_| message)
    }
}

/// The kind of a volume engine error: the one place that sorts them.
fn volume_kind(e: &VolumeError) -> GatewayError {
    let m = e.to_string();
    match e {
        VolumeError::Unavailable { .. }
        | VolumeError::Quorum(_)
        | VolumeError::MetadataUnavailable(_)
        | VolumeError::Metadata(_)
        | VolumeError::Timeout(_) => GatewayError::Unavailable(m),
        VolumeError::Claimed { .. } | VolumeError::Fenced(_) => GatewayError::Conflict(m),
        VolumeError::OutOfRange { .. } | VolumeError::Config(_) | VolumeError::Key(_) => GatewayError::Invalid(m),
        VolumeError::Target(t) => target_kind(t).with(m),
        // A full cache disk is an outage; anything else (a cache file larger than the file
        // system allows) is a request this gateway cannot take.
        VolumeError::Cache(io) if io.raw_os_error() == Some(libc::ENOSPC) => GatewayError::Unavailable(m),
        VolumeError::Cache(_) => GatewayError::Invalid(m),
    }
}

/// The kind of a target error.
fn target_kind(e: &TargetError) -> GatewayError {
    let m = e.to_string();
    match e {
        TargetError::InvalidKey(_) | TargetError::InvalidUri(_) | TargetError::Unsupported(_) => {
            GatewayError::Invalid(m)
        }
        TargetError::AlreadyExists(_) => GatewayError::Conflict(m),
        TargetError::NotFound(_)
        | TargetError::Full(_)
        | TargetError::Unavailable(_)
        | TargetError::Corrupt(_)
        | TargetError::Io(_) => GatewayError::Unavailable(m),
    }
}

/// The kind of a registry (clients, groups, grants) error.
fn access_kind(e: &AccessError) -> GatewayError {
    let m = e.to_string();
    match e {
        AccessError::NoClient(_) | AccessError::NoGroup(_) | AccessError::NoInitiator { .. } => {
            GatewayError::NotFound(m)
        }
        AccessError::ClientExists(_) | AccessError::GroupExists(_) | AccessError::InitiatorTaken { .. } => {
            GatewayError::Conflict(m)
        }
        AccessError::BadName(_)
        | AccessError::BadRegion { .. }
        | AccessError::BadInitiator(_)
        | AccessError::NoChapSecret(_) => GatewayError::Invalid(m),
    }
}

/// The kind of a user store error.
fn user_kind(e: &UserError) -> GatewayError {
    let m = e.to_string();
    match e {
        UserError::NoUser(_) | UserError::NoToken(..) => GatewayError::NotFound(m),
        UserError::Exists(_) | UserError::LastAdmin(_) => GatewayError::Conflict(m),
        UserError::Invalid(_) => GatewayError::Invalid(m),
        UserError::Hash(_) => GatewayError::Internal(m),
    }
}

/// The kind of one cause in a chain, if it is a typed error.
fn kind_of(cause: &(dyn std::error::Error + 'static)) -> Option<GatewayError> {
    if let Some(g) = cause.downcast_ref::<GatewayError>() {
        Some(g.clone())
    } else if let Some(v) = cause.downcast_ref::<VolumeError>() {
        Some(volume_kind(v))
    } else if let Some(t) = cause.downcast_ref::<TargetError>() {
        Some(target_kind(t))
    } else if let Some(a) = cause.downcast_ref::<AccessError>() {
        Some(access_kind(a))
    } else if let Some(u) = cause.downcast_ref::<UserError>() {
        Some(user_kind(u))
    } else {
        cause.downcast_ref::<PlacementError>().map(|p| GatewayError::Invalid(p.to_string()))
    }
}

impl From<VolumeError> for GatewayError {
    fn from(e: VolumeError) -> Self {
        volume_kind(&e)
    }
}

impl From<TargetError> for GatewayError {
    fn from(e: TargetError) -> Self {
        target_kind(&e)
    }
}

impl From<AccessError> for GatewayError {
    fn from(e: AccessError) -> Self {
        access_kind(&e)
    }
}

impl From<UserError> for GatewayError {
    fn from(e: UserError) -> Self {
        user_kind(&e)
    }
}

/// Steps inside the gateway chain their causes with `anyhow`; at the gateway's edge the
/// outermost typed cause decides the kind, and the whole chain is the message. A chain
/// without a typed cause is a request that could not be carried out as given: `Invalid`.
impl From<anyhow::Error> for GatewayError {
    fn from(e: anyhow::Error) -> Self {
        let message = format!("{e:#}");
        let kind = e.chain().find_map(kind_of).unwrap_or(GatewayError::Invalid(String::new()));
        kind.with(message)
    }
}

impl From<PlacementError> for GatewayError {
    fn from(e: PlacementError) -> Self {
        GatewayError::Invalid(e.to_string())
    }
}

impl From<LayoutError> for GatewayError {
    fn from(e: LayoutError) -> Self {
        GatewayError::Invalid(e.to_string())
    }
}
