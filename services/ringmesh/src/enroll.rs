//! `ringmesh enroll`: a node's first enrollment as a step of its own, so
//! the bootstrap token is needed only there (the chart runs it as an init
//! container; the supernode container never sees the token).

use std::path::PathBuf;
use std::process::ExitCode;

/// `ringmesh enroll` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct EnrollArgs {
    /// The enrollment service (HOST:PORT).
    #[arg(long, env = "RINGMESH_ENROLLMENT")]
    pub enrollment: String,
    /// The bootstrap file: the token, and a `ca-sha256:` line pinning the
    /// farm CA.
    #[arg(long, env = "RINGMESH_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: PathBuf,
    /// The node's name (the supernode's --name).
    #[arg(long, env = "RINGMESH_NAME")]
    pub name: String,
    /// The node's data directory (the supernode's --data): node.key,
    /// node.crt, ca.crt, crl.pem and farm.secret are written there.
    #[arg(long, env = "RINGMESH_DATA")]
    pub data: PathBuf,
}

async fn enroll(a: &EnrollArgs) -> Result<String, String> {
    if let Some(id) = ringmesh_enrollment::EnrolledIdentity::load(&a.data)
        .map_err(|e| format!("--data {}: {e}", a.data.display()))?
    {
        return Ok(format!(
            "already enrolled as node {} (in {})",
            hex::encode(id.node_id),
            a.data.display()
        ));
    }
    let text = std::fs::read_to_string(&a.bootstrap_token_file).map_err(|e| {
        format!(
            "--bootstrap-token-file: cannot read {}: {e}",
            a.bootstrap_token_file.display()
        )
    })?;
    let bootstrap = ringmesh_enrollment::Bootstrap::parse(&text).map_err(|e| {
        format!(
            "--bootstrap-token-file: {}: {e}",
            a.bootstrap_token_file.display()
        )
    })?;
    if bootstrap.ca_sha256.is_none() {
        eprintln!(
            "ringmesh enroll: warning: {} pins no CA (ca-sha256:): the CA enrollment returns is trusted as is",
            a.bootstrap_token_file.display()
        );
    }
    let id = ringmesh_enrollment::enroll(&a.enrollment, &bootstrap, &a.name, &a.data)
        .await
        .map_err(|e| format!("enrollment at {} failed: {e}", a.enrollment))?;
    Ok(format!(
        "enrolled as node {} (in {})",
        hex::encode(id.node_id),
        a.data.display()
    ))
}

/// Runs `ringmesh enroll`: exits 0 once the data directory holds an
/// identity (at once if it already did), 1 when enrollment fails.
pub fn run(a: &EnrollArgs) -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(enroll(a)) {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringmesh enroll: {e}");
            ExitCode::FAILURE
        }
    }
}
