//! How every service reaches etcd: its endpoints and, for `https://`
//! ones, TLS with a client certificate. An etcd run with
//! `--client-cert-auth` takes the certificate's common name as the user, so
//! each component's certificate names its user, and that user's role holds
//! only the component's prefixes ([`roles`]).

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::{ConfigError, err};

/// etcd endpoints and the TLS to reach them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Etcd {
    /// `http://HOST:PORT` or `https://HOST:PORT`, all of one scheme.
    pub endpoints: Vec<String>,
    /// For `https://` endpoints.
    pub tls: Option<EtcdTls>,
}

/// PEM files: the CA etcd's server certificate comes from, and this
/// component's client certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
}

fn read(what: &str, p: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("cannot read the {what} {}: {e}", p.display()))
}

impl Etcd {
    /// Plain-HTTP endpoints, as given (tests and labs).
    pub fn plain(endpoints: Vec<String>) -> Etcd {
        Etcd {
            endpoints,
            tls: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Validates endpoints and TLS files (`etcd`, `etcd-ca`, `etcd-cert`,
    /// `etcd-key` name the settings in errors).
    pub fn new(
        endpoints: &[String],
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Etcd, ConfigError> {
        let endpoints = endpoints
            .iter()
            .map(|e| etcd_endpoint(e).map_err(|m| err("etcd", m)))
            .collect::<Result<Vec<_>, _>>()?;
        let https = endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if https != 0 && https != endpoints.len() {
            return Err(err("etcd", "mix of http:// and https:// endpoints"));
        }
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => return Err(err("etcd-key", "--etcd-cert needs --etcd-key")),
            (None, Some(_)) => return Err(err("etcd-cert", "--etcd-key needs --etcd-cert")),
        };
        let tls = match ca {
            None if identity.is_some() => {
                return Err(err("etcd-ca", "--etcd-cert needs --etcd-ca (TLS to etcd)"));
            }
            None if https > 0 => {
                return Err(err(
                    "etcd-ca",
                    "https:// endpoints need --etcd-ca, the CA of etcd's server certificate",
                ));
            }
            None => None,
            Some(_) if endpoints.is_empty() => {
                return Err(err("etcd-ca", "--etcd-ca without --etcd endpoints"));
            }
            Some(_) if https == 0 => {
                return Err(err(
                    "etcd",
                    "TLS to etcd (--etcd-ca) needs https:// endpoints",
                ));
            }
            Some(ca) => Some(EtcdTls { ca, identity }),
        };
        let etcd = Etcd { endpoints, tls };
        // Files are read at every connection (a rotated certificate is
        // picked up on the next one); check them now for a clear error.
        etcd.tls_options().map_err(|m| err("etcd-ca", m))?;
        Ok(etcd)
    }

    fn tls_options(&self) -> Result<Option<TlsOptions>, String> {
        let Some(t) = &self.tls else { return Ok(None) };
        let ca = read("etcd CA certificate", &t.ca)?;
        if !ca.contains("BEGIN CERTIFICATE") {
            return Err(format!("{} holds no PEM certificate", t.ca.display()));
        }
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((c, k)) = &t.identity {
            let (cert, key) = (
                read("etcd client certificate", c)?,
                read("etcd client key", k)?,
            );
            if !cert.contains("BEGIN CERTIFICATE") || !key.contains("PRIVATE KEY") {
                return Err(format!(
                    "{} and {} must hold a PEM certificate and key",
                    c.display(),
                    k.display()
                ));
            }
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Ok(Some(tls))
    }

    /// `opts` with this TLS added.
    pub fn options(&self, opts: ConnectOptions) -> Result<ConnectOptions, String> {
        Ok(match self.tls_options()? {
            Some(tls) => opts.with_tls(tls),
            None => opts,
        })
    }

    /// Connects (lazily: etcd need not be up) with `opts` and this TLS.
    pub async fn connect(&self, opts: ConnectOptions) -> Result<Client, String> {
        let opts = self.options(opts)?;
        Client::connect(&self.endpoints, Some(opts))
            .await
            .map_err(|e| format!("etcd: {e}"))
    }

    /// The usual options: a connect timeout and keep-alives.
    pub fn default_options(timeout: Duration) -> ConnectOptions {
        ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_keep_alive(Duration::from_secs(5), timeout)
    }
}

/// Checks an etcd endpoint: `http://HOST:PORT`, `https://HOST:PORT` or
/// `HOST:PORT` (http); returns it as a URL.
pub fn etcd_endpoint(s: &str) -> Result<String, String> {
    let (scheme, rest) = match s.split_once("://") {
        Some((sch @ ("http" | "https"), rest)) => (sch, rest),
        Some(_) => return Err(format!("'{s}' is not http(s)://HOST:PORT")),
        None => ("http", s),
    };
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("'{s}' is not http(s)://HOST:PORT"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("'{s}' is not http(s)://HOST:PORT"));
    }
    Ok(format!("{scheme}://{rest}"))
}

/// The etcd user of each component (its client certificate's common
/// name) and the key prefixes its role may read and write, for keys under
/// `prefix` (`--etcd-prefix`, `/ringmesh/` by default). Nothing else is
/// granted: a supernode's credentials cannot read subscribers or the CA.
pub fn roles(prefix: &str) -> Vec<(&'static str, Vec<String>)> {
    vec![
        // Membership is always under /ringmesh/members/.
        (SUPERNODE_USER, vec!["/ringmesh/members/".to_string()]),
        (
            PROVISIONING_USER,
            vec![
                format!("{prefix}subscribers/"),
                format!("{prefix}trusted-elements/"),
            ],
        ),
        (ENROLLMENT_USER, vec![format!("{prefix}enrollment/")]),
    ]
}

pub const SUPERNODE_USER: &str = "ringmesh-supernode";
pub const PROVISIONING_USER: &str = "ringmesh-provisioning";
pub const ENROLLMENT_USER: &str = "ringmesh-enrollment";

/// Creates (or updates) each component's role and user and turns
/// authentication on, with `client` connected as etcd's `root` (whose
/// user and role are created too when missing). Idempotent: run again it
/// resets each role to exactly its prefixes.
pub async fn apply_roles(client: &mut Client, prefix: &str) -> Result<(), etcd_client::Error> {
    use etcd_client::{Permission, RoleRevokePermissionOptions};
    let mut auth = client.auth_client();
    let users: Vec<String> = auth.user_list().await?.users().to_vec();
    let existing: Vec<String> = auth.role_list().await?.roles().to_vec();
    if !users.iter().any(|u| u == "root") {
        auth.user_add("root", unusable_password()?, None).await?;
    }
    if !existing.iter().any(|r| r == "root") {
        auth.role_add("root").await?;
    }
    auth.user_grant_role("root", "root").await?;
    for (user, prefixes) in roles(prefix) {
        if existing.iter().any(|r| r == user) {
            // Start from nothing: a prefix granted before and since
            // removed is revoked.
            for p in auth.role_get(user).await?.permissions() {
                let key = String::from_utf8_lossy(p.key()).into_owned();
                let end = p.range_end().to_vec();
                auth.role_revoke_permission(
                    user,
                    key,
                    Some(RoleRevokePermissionOptions::new().with_range_end(end)),
                )
                .await?;
            }
        } else {
            auth.role_add(user).await?;
        }
        for p in prefixes {
            auth.role_grant_permission(user, Permission::read_write(p).with_prefix())
                .await?;
        }
        if !users.iter().any(|u| u == user) {
            // Users authenticate by certificate; the password is random
            // and never kept.
            auth.user_add(user, unusable_password()?, None).await?;
        }
        auth.user_grant_role(user, user).await?;
    }
    auth.auth_enable().await?;
    Ok(())
}

/// A random password never written anywhere (etcd 3.4 wants one; users
/// here log in with certificates).
fn unusable_password() -> Result<String, etcd_client::Error> {
    use std::io::Read as _;
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(etcd_client::Error::IoError)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
        let (ca, cert, key) = (dir.join("ca.crt"), dir.join("c.crt"), dir.join("c.key"));
        let pem = "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n";
        std::fs::write(&ca, pem).unwrap();
        std::fs::write(&cert, pem).unwrap();
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nMA==\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        (ca, cert, key)
    }

    #[test]
    fn endpoints_and_tls_are_checked_naming_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = files(dir.path());
        let https = ["https://127.0.0.1:2379".to_string()];
        let http = ["127.0.0.1:2379".to_string()];
        let e = Etcd::new(
            &https,
            Some(ca.clone()),
            Some(cert.clone()),
            Some(key.clone()),
        )
        .unwrap();
        assert_eq!(e.endpoints, https);
        assert_eq!(e.tls.unwrap().identity, Some((cert.clone(), key.clone())));
        assert_eq!(
            Etcd::new(&http, None, None, None).unwrap().endpoints,
            ["http://127.0.0.1:2379"]
        );
        assert!(Etcd::new(&[], None, None, None).unwrap().is_empty());
        let key_of = |r: Result<Etcd, ConfigError>| r.unwrap_err().key;
        assert_eq!(key_of(Etcd::new(&https, None, None, None)), "etcd-ca");
        assert_eq!(
            key_of(Etcd::new(&http, Some(ca.clone()), None, None)),
            "etcd"
        );
        assert_eq!(
            key_of(Etcd::new(&[], Some(ca.clone()), None, None)),
            "etcd-ca"
        );
        assert_eq!(
            key_of(Etcd::new(
                &https,
                Some(ca.clone()),
                Some(cert.clone()),
                None
            )),
            "etcd-key"
        );
        assert_eq!(
            key_of(Etcd::new(
                &https,
                None,
                Some(cert.clone()),
                Some(key.clone())
            )),
            "etcd-ca"
        );
        let mixed = [https[0].clone(), http[0].clone()];
        assert_eq!(
            key_of(Etcd::new(&mixed, Some(ca.clone()), None, None)),
            "etcd"
        );
        let missing = dir.path().join("nope.crt");
        let e = Etcd::new(&https, Some(missing), None, None).unwrap_err();
        assert!(e.message.contains("nope.crt"), "{e}");
        let e = Etcd::new(&https, Some(key.clone()), None, None).unwrap_err();
        assert!(e.message.contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn each_component_gets_only_its_prefixes() {
        let r = roles("/farm/");
        let of = |u: &str| r.iter().find(|(n, _)| *n == u).unwrap().1.clone();
        assert_eq!(of(SUPERNODE_USER), ["/ringmesh/members/"]);
        assert_eq!(
            of(PROVISIONING_USER),
            ["/farm/subscribers/", "/farm/trusted-elements/"]
        );
        assert_eq!(of(ENROLLMENT_USER), ["/farm/enrollment/"]);
        let all: Vec<&String> = r.iter().flat_map(|(_, p)| p).collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert!(
                    !a.starts_with(b.as_str()) && !b.starts_with(a.as_str()),
                    "{a} {b} overlap"
                );
            }
        }
    }
}
