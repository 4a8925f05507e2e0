//! `RINGMESH_LISTENING_FILE`: a supervisor (`ringmesh dev`) sets it to a
//! path, and the service writes there, as one JSON object, the addresses it
//! listens on once it serves. Ports the kernel chose (port 0 in the config)
//! are then known to whoever started the process.
//!
//! A supernode writes `{"sip": ["udp:HOST:PORT", "tcp:HOST:PORT", …],
//! "overlay", "admin", "metrics", "node_id"}`; a control-plane service
//! `{"api", "metrics"}` (null for a listener it does not have).

use std::path::Path;

use serde_json::Value;

/// The environment variable naming the file.
pub const ENV: &str = "RINGMESH_LISTENING_FILE";

/// Writes `v` to the file `RINGMESH_LISTENING_FILE` names, if it is set:
/// to a temporary file, then renamed, so a reader never sees half of it.
pub fn announce(v: &Value) {
    let Some(path) = std::env::var_os(ENV) else {
        return;
    };
    let path = Path::new(&path);
    let tmp = path.with_extension("tmp");
    let written = std::fs::write(&tmp, v.to_string()).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the listening file");
    }
}

/// The listening file at `path`, once it exists and parses.
pub fn read(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}
