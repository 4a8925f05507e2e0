//! The one place where errors become gRPC statuses (STYLE.md §8).

use tonic::{Code, Status};

use crate::store::StoreError;
use crate::validate::FieldError;

impl From<FieldError> for Status {
    fn from(e: FieldError) -> Status {
        Status::invalid_argument(e.to_string())
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        let code = match &e {
            StoreError::NotFound { .. } => Code::NotFound,
            StoreError::AlreadyExists { .. } => Code::AlreadyExists,
            StoreError::RevisionMismatch { .. } => Code::Aborted,
            StoreError::Unavailable(_) => Code::Unavailable,
            StoreError::Corrupt { .. } => Code::DataLoss,
        };
        Status::new(code, e.to_string())
    }
}

/// The short name of a status code, for metrics labels.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::InvalidArgument => "invalid_argument",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::Aborted => "aborted",
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::PermissionDenied => "permission_denied",
        Code::DataLoss => "data_loss",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping() {
        let s: Status = StoreError::NotFound {
            field: "private_id",
            value: "x".into(),
        }
        .into();
        assert_eq!(s.code(), Code::NotFound);
        let s: Status = StoreError::Unavailable("etcd".into()).into();
        assert_eq!(s.code(), Code::Unavailable);
        let s: Status = FieldError {
            field: "page_size".into(),
            message: "too big".into(),
        }
        .into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().starts_with("page_size:"));
    }
}
