//! # ringmesh-proto: the control-plane gRPC APIs
//!
//! Generated from `proto/ringmesh/<service>/v1/*.proto` at build time by
//! protox (a pure-Rust protobuf compiler) and tonic-prost-build, so no
//! system `protoc` is needed. Each module holds the messages, a tonic client
//! and a tonic server trait:
//!
//! | module | service | served by |
//! |---|---|---|
//! | [`provisioning`] | `ringmesh.provisioning.v1.Provisioning`: subscribers and trusted elements | `ringmesh provisioning` |
//! | [`enrollment`] | `ringmesh.enrollment.v1.Enrollment`: the farm CA | `ringmesh enrollment` |
//! | [`admin`] | `ringmesh.admin.v1.Admin`: one supernode's state | every supernode |
//!
//! The `.proto` files are the reference (every field is documented there);
//! `docs/api.md` is their operator-facing summary.
//!
//! The overlay's wire messages are not here: the sans-IO overlay core
//! compiles them itself, without tonic.

#![allow(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

/// `ringmesh.provisioning.v1`: the subscriber service and the trusted elements.
pub mod provisioning {
    tonic::include_proto!("ringmesh.provisioning.v1");
}

/// `ringmesh.enrollment.v1`: the farm's certificate authority.
pub mod enrollment {
    tonic::include_proto!("ringmesh.enrollment.v1");
}

/// `ringmesh.admin.v1`: the admin service of every supernode.
pub mod admin {
    tonic::include_proto!("ringmesh.admin.v1");
}

/// The `.proto` sources, for tools that check documentation against them.
pub const PROTO_SOURCES: &[(&str, &str)] = &[
    (
        "ringmesh/provisioning/v1/provisioning.proto",
        include_str!("../ringmesh/provisioning/v1/provisioning.proto"),
    ),
    (
        "ringmesh/enrollment/v1/enrollment.proto",
        include_str!("../ringmesh/enrollment/v1/enrollment.proto"),
    ),
    (
        "ringmesh/admin/v1/admin.proto",
        include_str!("../ringmesh/admin/v1/admin.proto"),
    ),
];
