//! The `ringmesh-load` binary: see the crate documentation of
//! [`ringmesh_load`] and `loadtest/README.md`.

fn main() {
    std::process::exit(ringmesh_load::run::main());
}
