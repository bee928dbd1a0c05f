//! The request and response bodies of the API, shared with clients (the CLI): the gateway's
//! own types where it has them, and the bodies that only the API has.

use cleave_control::access::{Mode, Region};
use cleave_control::users::Role;
use serde::{Deserialize, Serialize};

pub use cleave_control::hierarchy::ChildControl;
pub use cleave_control::pool::{Event, NodeInfo};
pub use cleave_gateway::groups::{ClientView, Credentials, GroupView};
pub use cleave_gateway::tasks::{NewTask, TaskKind, TaskState, TaskView};
pub use cleave_gateway::users::{TokenView, UserView};
pub use cleave_gateway::views::VolumeView;
pub use cleave_gateway::volumes::CreateVolume;
pub use cleave_volume::scrub::ScrubReport;

/// Body of `POST /api/v1/login`.
#[derive(Deserialize, Serialize)]
pub struct Login {
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("name", &self.name).field("password", &"<redacted>").finish()
    }
}

/// Body of `POST /api/v1/users`.
#[derive(Deserialize, Serialize)]
pub struct NewUser {
    pub name: String,
    pub role: Role,
    pub password: String,
}

/// Body of `PUT /api/v1/users/{name}`.
#[derive(Deserialize, Serialize)]
pub struct ChangeUser {
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub password: Option<String>,
}

/// Body of `POST /api/v1/users/{name}/tokens` and `POST /api/v1/me/tokens`.
#[derive(Deserialize, Serialize, Default)]
pub struct NewToken {
    #[serde(default)]
    pub label: String,
}

/// Body of `PUT /api/v1/me/password`.
#[derive(Deserialize, Serialize)]
pub struct NewPassword {
    pub current: String,
    pub password: String,
}

/// Body of `POST /api/v1/clients` and `POST /api/v1/groups`.
#[derive(Deserialize, Serialize)]
pub struct NewName {
    pub name: String,
}

/// Query of the calls that may crypto-erase a volume (revoke, delete a group).
#[derive(Deserialize, Serialize)]
pub struct Erase {
    #[serde(default)]
    pub erase: bool,
}

/// Body of `PUT /api/v1/groups/{group}/volumes/{volume}`.
#[derive(Deserialize, Serialize)]
pub struct GrantBody {
    #[serde(default = "read_write")]
    pub mode: Mode,
    #[serde(default)]
    pub regions: Vec<Region>,
}
fn read_write() -> Mode {
    Mode::ReadWrite
}

/// Query of `POST /api/v1/volumes/{name}/scrub`.
#[derive(Deserialize, Serialize)]
pub struct ScrubQuery {
    #[serde(default)]
    pub repair: bool,
}

/// Query of `GET /api/v1/nodes`.
#[derive(Deserialize, Serialize, Default)]
#[serde(default)]
pub struct NodesQuery {
    /// Also the nodes of every child control (each node then names its `control`).
    pub all: bool,
    /// How many levels of child controls to descend (with `all`).
    pub depth: Option<u32>,
}
