//! The request and response bodies of the API, shared with clients (the CLI): the gateway's
//! own types where it has them, and the bodies that only the API has.

pub use cleave_control::access::{Mode, Region};
pub use cleave_control::users::Role;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub use cleave_control::access::{Grant, Group};
pub use cleave_control::hierarchy::{ChildControl, TreeNode};
pub use cleave_control::pool::{Event, NodeInfo, NodeStatus, PoolSummary};
pub use cleave_gateway::groups::{ChapKind, ClientView, Credentials, GroupView, InitiatorView};
pub use cleave_gateway::iscsi::ChapSecrets;
pub use cleave_gateway::lifecycle::VolumeOrder;
pub use cleave_gateway::mirror::CreateMirror;
pub use cleave_gateway::tasks::{NewTask, TaskKind, TaskState, TaskView};
pub use cleave_gateway::users::{TokenView, UserView};
pub use cleave_gateway::views::VolumeView;
pub use cleave_gateway::volumes::CreateVolume;
pub use cleave_gateway::webhook::{Notification, SetWebhook, WebhookSecret, WebhookView};
/// A mirror's mode (`sync` or `async`); `Mode` is a grant's.
pub use cleave_mirror::Mode as MirrorMode;
/// Which side of a mirror a gateway is (`primary` or `secondary`); `Role` is a user's.
pub use cleave_mirror::Role as MirrorRole;
pub use cleave_mirror::{MirrorState, MirrorView, OnFailure, PeerCredentials};
pub use cleave_volume::scrub::ScrubReport;
pub use cleave_volume::scrub::ShareProblem;
pub use cleave_volume::{Durability, Health};

/// What the pattern of a volume name allows: 1-64 letters, digits, '-', '_' or '.'
/// (`cleave_volume::meta::VolumeConfig::validate`).
pub const VOLUME_NAME: &str = r"^[A-Za-z0-9._-]{1,64}$";
/// Names of clients, groups and users: as a volume name, but not starting with '.'
/// (`cleave_control::access::check_name`).
pub const NAME: &str = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$";

/// The body of every refusal the API itself sends: `{"error": "..."}`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// Answer of `POST /api/v1/login` and `GET /api/v1/me`: who is calling, and for a session,
/// the token to repeat in the `X-Cleave-CSRF` header.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct Me {
    /// Only for a session (the console).
    pub csrf: Option<String>,
    pub name: String,
    pub role: Role,
}

/// Answer of `POST /api/v1/volumes`: the volume, and the credentials of a client made for it
/// (storage on demand).
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct CreatedVolume {
    #[serde(flatten)]
    pub volume: VolumeView,
    /// Only when `client` named a new client: its certificate and key, shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
}

/// Answer of `POST /api/v1/users/{name}/tokens` and `POST /api/v1/me/tokens`: the new token,
/// whose secret is shown here only.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct IssuedToken {
    pub id: String,
    pub label: String,
    /// The secret, to send as `Authorization: Bearer <token>`.
    pub token: String,
    pub user: String,
}

/// Answer of `DELETE /api/v1/groups/{name}`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct GroupDeleted {
    /// Volumes crypto-erased because this group was the last to reach them.
    pub erased_volumes: Vec<String>,
}

/// Answer of `DELETE /api/v1/groups/{group}/volumes/{volume}`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct Revoked {
    /// Whether the volume was crypto-erased (this group was the last to reach it).
    pub erased: bool,
}

/// Body of `POST /api/v1/login`.
#[derive(Deserialize, Serialize, ToSchema)]
pub struct Login {
    #[schema(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$", min_length = 1, max_length = 64)]
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("name", &self.name).field("password", &"<redacted>").finish()
    }
}

/// Body of `POST /api/v1/users`.
#[derive(Deserialize, Serialize, ToSchema)]
pub struct NewUser {
    #[schema(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$", min_length = 1, max_length = 64)]
    pub name: String,
    pub role: Role,
    /// At least 8 characters.
    #[schema(min_length = 8)]
    pub password: String,
}

/// Body of `PUT /api/v1/users/{name}`.
#[derive(Deserialize, Serialize, ToSchema)]
pub struct ChangeUser {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// At least 8 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 8)]
    pub password: Option<String>,
}

/// Body of `POST /api/v1/users/{name}/tokens` and `POST /api/v1/me/tokens`.
#[derive(Deserialize, Serialize, Default, ToSchema)]
pub struct NewToken {
    #[serde(default)]
    pub label: String,
}

/// Body of `PUT /api/v1/me/password`.
#[derive(Deserialize, Serialize, ToSchema)]
pub struct NewPassword {
    pub current: String,
    /// At least 8 characters.
    #[schema(min_length = 8)]
    pub password: String,
}

/// Body of `POST /api/v1/clients` and `POST /api/v1/groups`.
#[derive(Deserialize, Serialize, ToSchema)]
pub struct NewName {
    #[schema(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$", min_length = 1, max_length = 64)]
    pub name: String,
}

/// Body of `POST /api/v1/clients/{client}/chap`.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct NewChap {
    /// Also a secret for the gateway to prove back (mutual CHAP).
    #[serde(default)]
    pub mutual: bool,
}

/// Body of `PUT /api/v1/clients/{client}/initiators/{initiator}`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct InitiatorBody {
    /// Whether the initiator must prove the client's CHAP secret (default). Without it, the
    /// initiator's name, which any host can claim, is all that identifies it.
    #[serde(default = "yes")]
    pub chap: bool,
}

fn yes() -> bool {
    true
}

/// Query of the calls that may crypto-erase a volume (revoke, delete a group).
#[derive(Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Erase {
    /// Allow crypto-erasing volumes that no other group reaches.
    #[serde(default)]
    pub erase: bool,
}

/// Body of `PUT /api/v1/groups/{group}/volumes/{volume}`.
#[derive(Deserialize, Serialize, ToSchema)]
pub struct GrantBody {
    #[serde(default = "read_write")]
    #[schema(default = "read-write")]
    pub mode: Mode,
    #[serde(default)]
    pub regions: Vec<Region>,
}
fn read_write() -> Mode {
    Mode::ReadWrite
}

/// Query of `POST /api/v1/volumes/{name}/scrub`.
#[derive(Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ScrubQuery {
    /// Rebuild the missing and bad shares.
    #[serde(default)]
    pub repair: bool,
}

/// Query of `GET /api/v1/nodes`.
#[derive(Deserialize, Serialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default)]
pub struct NodesQuery {
    /// Also the nodes of every child control (each node then names its `control`).
    pub all: bool,
    /// How many levels of child controls to descend (with `all`).
    #[param(minimum = 0)]
    pub depth: Option<u32>,
}

/// Body of `POST /api/v1/mirrors/{volume}/promote`.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct Promote {
    /// Take over without the primary: a new generation, even when the primary cannot be
    /// reached or this side is still copying. Without it, a planned switchover: the primary
    /// sends what it has and becomes the mirror.
    #[serde(default)]
    #[schema(default = false)]
    pub force: bool,
}

/// Body of `POST /api/v1/mirrors/{volume}/resolve`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct Resolve {
    /// Whose changes since the split are discarded.
    pub discard: Discard,
}

/// The side of a split brain whose changes are discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    /// This gateway's, the one the call is made on: it becomes the mirror, and the peer copies
    /// over every region either side changed since the split.
    Local,
}

/// Answer of `POST /api/v1/mirror-credentials`: what a peer gateway needs to reach this one's
/// mirror listener (the `credentials` of `POST /api/v1/mirrors` on that peer). The key is in
/// this answer only.
#[derive(Deserialize, Serialize, ToSchema)]
pub struct MirrorCredentials {
    /// The peer's name here: a client in the group `mirror-peers`.
    pub name: String,
    /// This gateway's CA certificate, which the peer trusts for the listener.
    pub ca_pem: String,
    /// The peer's client certificate.
    pub cert_pem: String,
    /// The peer's private key.
    pub key_pem: String,
}

impl MirrorCredentials {
    pub fn new(name: String, c: PeerCredentials) -> Self {
        MirrorCredentials { name, ca_pem: c.ca_pem, cert_pem: c.cert_pem, key_pem: c.key_pem }
    }
}

impl std::fmt::Debug for MirrorCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorCredentials").field("name", &self.name).field("key_pem", &"<redacted>").finish()
    }
}
