/// Why a target operation failed. Messages name the target and key, never a credential.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("invalid key {0:?}: keys are relative '/'-separated names without '..' or hidden components")]
    InvalidKey(String),
    #[error("invalid target URI: {0}")]
    InvalidUri(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("target full: {0}")]
    Full(String),
    #[error("target unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt: {0}")]
    Corrupt(String),
    #[error("I/O error: {0}")]
    Io(String),
}

impl TargetError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, TargetError::NotFound(_))
    }
    pub fn is_already_exists(&self) -> bool {
        matches!(self, TargetError::AlreadyExists(_))
    }
}

/// Checks that a key is a safe relative path.
pub(crate) fn check_key(key: &str) -> Result<(), TargetError> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && !key.contains('\\')
        && !key.contains('\0')
        && key.split('/').all(|c| !c.is_empty() && !c.starts_with('.'));
    if ok {
        Ok(())
    } else {
        Err(TargetError::InvalidKey(key.to_string()))
    }
}
