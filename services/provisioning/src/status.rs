//! The one place where store errors become gRPC statuses (a field error
//! becomes `INVALID_ARGUMENT` where it is defined, in
//! `ringmesh_provisioning_client::validate`).

use tonic::{Code, Status};

use crate::store::StoreError;

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        let code = match &e {
            StoreError::NotFound { .. } | StoreError::ElementNotFound { .. } => Code::NotFound,
            StoreError::AlreadyExists { .. } | StoreError::ElementExists { .. } => {
                Code::AlreadyExists
            }
            StoreError::RevisionMismatch { .. } | StoreError::ElementRevisionMismatch { .. } => {
                Code::Aborted
            }
            StoreError::TooManyElements { .. } => Code::ResourceExhausted,
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
        Code::ResourceExhausted => "resource_exhausted",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::FieldError;

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
        let s: Status = StoreError::ElementNotFound { name: "gw".into() }.into();
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "no trusted element named 'gw'");
        let s: Status = StoreError::ElementExists { name: "gw".into() }.into();
        assert_eq!(s.code(), Code::AlreadyExists);
        let s: Status = StoreError::TooManyElements { limit: 1000 }.into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        let s: Status = FieldError {
            field: "page_size".into(),
            message: "too big".into(),
        }
        .into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().starts_with("page_size:"));
    }
}
