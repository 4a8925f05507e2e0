//! The one place where enrollment errors become gRPC statuses.

use tonic::{Code, Status};

use crate::authority::AuthorityError;
use crate::ca::CaError;
use crate::kv::KvError;

impl From<AuthorityError> for Status {
    fn from(e: AuthorityError) -> Status {
        let code = match &e {
            AuthorityError::Kv(KvError::Unavailable(_)) => Code::Unavailable,
            AuthorityError::Ca(CaError::Csr(_) | CaError::Certificate(_)) => Code::InvalidArgument,
            AuthorityError::Ca(CaError::Ca(_))
            | AuthorityError::Corrupt(_)
            | AuthorityError::Sealed(_) => Code::Internal,
            AuthorityError::Denied(_) => Code::PermissionDenied,
            AuthorityError::NotFound(_) => Code::NotFound,
        };
        let msg = match &e {
            AuthorityError::Ca(CaError::Csr(m)) => format!("csr_pem: {m}"),
            AuthorityError::Ca(CaError::Certificate(m)) => format!("certificate_pem: {m}"),
            _ => e.to_string(),
        };
        Status::new(code, msg)
    }
}

/// INVALID_ARGUMENT naming the field.
pub fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {message}"))
}

/// The short name of a status code, for metrics labels.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::InvalidArgument => "invalid_argument",
        Code::NotFound => "not_found",
        Code::PermissionDenied => "permission_denied",
        Code::Unauthenticated => "unauthenticated",
        Code::Unavailable => "unavailable",
        Code::Internal => "internal",
        _ => "other",
    }
}
