//! Why a request was refused or failed, as the domain says it: a kind and one sentence a
//! person can act on. No HTTP here: the HTTP layer ([`crate::api::errors`]) maps each
//! [`ErrorKind`] to a status code and the sentence to an `ErrorBody`.

/// What kind of refusal or failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or names something invalid.
    BadRequest,
    /// No valid credential.
    Unauthorized,
    /// A valid credential that may not do this.
    Forbidden,
    /// Nothing by that name (or it belongs to someone else).
    NotFound,
    /// It clashes with the current state (a name taken, a device in a rollout).
    Conflict,
    /// A quota or rate limit is reached.
    TooManyRequests,
    /// The service failed; the log has the details, the caller gets none.
    Internal,
    /// Not possible for a moment (another replica must answer and does not yet); retry.
    Unavailable,
}

/// A refusal or failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    pub kind: ErrorKind,
    pub message: String,
}

pub type ServiceResult<T> = Result<T, ServiceError>;

impl ServiceError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ServiceError {
        ServiceError {
            kind,
            message: message.into(),
        }
    }
    pub fn bad_request(m: impl Into<String>) -> ServiceError {
        Self::new(ErrorKind::BadRequest, m)
    }
    pub fn not_found(m: impl Into<String>) -> ServiceError {
        Self::new(ErrorKind::NotFound, m)
    }
    pub fn conflict(m: impl Into<String>) -> ServiceError {
        Self::new(ErrorKind::Conflict, m)
    }
    pub fn forbidden(m: impl Into<String>) -> ServiceError {
        Self::new(ErrorKind::Forbidden, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> ServiceError {
        Self::new(ErrorKind::Unauthorized, m)
    }
    pub fn unavailable(m: impl Into<String>) -> ServiceError {
        Self::new(ErrorKind::Unavailable, m)
    }
    pub fn too_many(m: impl Into<String>) -> ServiceError {
        Self::new(ErrorKind::TooManyRequests, m)
    }
    /// Logs `e` and answers without it (an internal error never reaches the caller).
    pub fn internal(e: impl std::fmt::Display) -> ServiceError {
        tracing::error!(error = %e, "internal error");
        Self::new(
            ErrorKind::Internal,
            "internal error; the service log has the details",
        )
    }
    /// The answer for a device that does not exist or belongs to someone else.
    pub fn no_device(name: &str) -> ServiceError {
        Self::not_found(format!(
            "no device named {:?}; `hammer device list` shows yours",
            name.chars().take(80).collect::<String>()
        ))
    }
    pub fn no_deployment(id: &str) -> ServiceError {
        Self::not_found(format!(
            "no deployment {:?}; `hammer deployment list` shows yours",
            id.chars().take(80).collect::<String>()
        ))
    }
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ServiceError {}

impl From<crate::store::StoreError> for ServiceError {
    fn from(e: crate::store::StoreError) -> ServiceError {
        ServiceError::internal(e)
    }
}

impl From<anyhow::Error> for ServiceError {
    fn from(e: anyhow::Error) -> ServiceError {
        ServiceError::internal(format!("{e:#}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_error_does_not_reach_the_caller() {
        let e = ServiceError::internal("disk /var/lib/hammer full: secret detail");
        assert_eq!(e.kind, ErrorKind::Internal);
        assert!(!e.message.contains("secret"));
    }

    #[test]
    fn names_in_not_found_answers_are_cut() {
        let e = ServiceError::no_device(&"x".repeat(500));
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(e.message.len() < 200);
    }
}
