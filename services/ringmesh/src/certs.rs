//! `ringmesh certs issue`: a control-plane certificate from the farm CA's
//! files, for what enrollment does not issue: provisioning's server
//! certificate and operators' and admins' client certificates.

use std::path::PathBuf;
use std::process::ExitCode;

use ringmesh_enrollment::ca::{Ca, Role, control_files};

/// `ringmesh certs` commands.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CertsCommand {
    /// Issue a certificate and key into a directory (NAME.crt, NAME.key
    /// readable by its owner only, and the CA as ca.crt).
    Issue {
        /// The farm CA's certificate (PEM).
        #[arg(long)]
        ca_cert: PathBuf,
        /// The farm CA's private key (PEM).
        #[arg(long)]
        ca_key: PathBuf,
        /// server (provisioning's certificate, DNS name
        /// control.ringmesh.internal), operator or admin.
        #[arg(long)]
        role: String,
        /// File name and certificate common name, e.g. the operator's name.
        #[arg(long)]
        name: String,
        /// Where to write the files.
        #[arg(long)]
        out: PathBuf,
        /// Validity, days.
        #[arg(long, default_value_t = 90)]
        days: i64,
    },
}

fn issue(a: &CertsCommand) -> Result<PathBuf, String> {
    let CertsCommand::Issue {
        ca_cert,
        ca_key,
        role,
        name,
        out,
        days,
    } = a;
    let role = match role.as_str() {
        "server" => None,
        r => Some(
            Role::parse(r)
                .filter(|r| *r != Role::Supernode)
                .ok_or_else(|| {
                    format!("--role: '{r}' is not server, operator or admin (supernodes enroll)")
                })?,
        ),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "--name: '{name}' must be letters, digits, '-', '_' or '.'"
        ));
    }
    if !(1..=825).contains(days) {
        return Err(format!("--days: {days} is not between 1 and 825"));
    }
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let ca =
        Ca::from_pem(&read(ca_cert)?, &read(ca_key)?).map_err(|e| format!("--ca-cert: {e}"))?;
    let cert = out.join(format!("{name}.crt"));
    if cert.exists() {
        return Err(format!(
            "{} exists: remove it to issue a new one",
            cert.display()
        ));
    }
    let files = control_files(out, name, &ca, role, *days).map_err(|e| e.to_string())?;
    Ok(files.cert)
}

/// Runs `ringmesh certs`: 0 done, 2 a bad argument or file.
pub fn run(args: CertsArgs) -> ExitCode {
    match issue(&args.command) {
        Ok(path) => {
            println!("issued {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringmesh certs: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_each_role_and_refuses_what_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("test").unwrap();
        let (ca_cert, ca_key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        std::fs::write(&ca_cert, ca.cert_pem()).unwrap();
        std::fs::write(&ca_key, ca.key_pem()).unwrap();
        let cmd = |role: &str, name: &str, days| CertsCommand::Issue {
            ca_cert: ca_cert.clone(),
            ca_key: ca_key.clone(),
            role: role.into(),
            name: name.into(),
            out: dir.path().join("out"),
            days,
        };
        for (role, want) in [
            ("server", None),
            ("operator", Some(Role::Operator)),
            ("admin", Some(Role::Admin)),
        ] {
            let path = issue(&cmd(role, role, 30)).unwrap();
            let der = ringmesh_enrollment::ca::pem_certs(&std::fs::read_to_string(path).unwrap())
                .unwrap()
                .remove(0);
            assert_eq!(ringmesh_enrollment::ca::role_of(&der), want, "{role}");
        }
        let refused = |c: CertsCommand, what: &str| {
            let e = issue(&c).unwrap_err();
            assert!(e.contains(what), "{e}");
        };
        refused(cmd("operator", "operator", 30), "exists");
        refused(cmd("supernode", "x", 30), "--role");
        refused(cmd("root", "x", 30), "--role");
        refused(cmd("admin", "../x", 30), "--name");
        refused(cmd("admin", "y", 0), "--days");
        let mut bad = cmd("admin", "z", 30);
        let CertsCommand::Issue { ca_key, .. } = &mut bad;
        *ca_key = dir.path().join("missing.key");
        refused(bad, "cannot read");
    }
}
