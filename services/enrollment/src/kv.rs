//! A small key-value store for the CA's state: the CA itself, the farm
//! secret and the record of every issued certificate. Two implementations:
//! [`FileKv`] (a data directory, the default) and [`EtcdKv`].
//!
//! Keys are relative paths such as `ca`, `farm-secret`, `certs/<serial>`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

/// Why a KV operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The store cannot be reached or did not answer in time.
    #[error("enrollment store unavailable: {0}")]
    Unavailable(String),
}

/// Where the CA keeps its state.
pub trait Kv: Send + Sync + 'static {
    /// The value of `key`.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, KvError>> + Send;
    /// Sets `key`.
    fn put(&self, key: &str, value: Vec<u8>) -> impl Future<Output = Result<(), KvError>> + Send;
    /// Sets `key` unless it exists; returns whether it was set. Two
    /// enrollment replicas starting at once agree on one CA this way.
    fn put_if_absent(
        &self,
        key: &str,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<bool, KvError>> + Send;
    /// Every key under `prefix`, sorted, with its value.
    fn list(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>, KvError>> + Send;
}

/// Keys as files under a directory, each written atomically (temporary
/// file, sync, rename) and readable by the owner only.
#[derive(Debug, Clone)]
pub struct FileKv {
    root: PathBuf,
}

fn io(path: &Path, e: std::io::Error) -> KvError {
    KvError::Unavailable(format!("{}: {e}", path.display()))
}

impl FileKv {
    /// A store under `root` (created if missing, mode 0700).
    pub fn open(root: &Path) -> Result<FileKv, KvError> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| io(root, e))?;
        Ok(FileKv {
            root: root.to_path_buf(),
        })
    }

    fn path(&self, key: &str) -> Result<PathBuf, KvError> {
        if key.is_empty()
            || key
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(KvError::Unavailable(format!("bad key '{key}'")));
        }
        Ok(self.root.join(key))
    }

    /// Writes `value` to a fresh temporary file next to `path`.
    fn temp(&self, path: &Path, value: &[u8]) -> Result<PathBuf, KvError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = path.parent().expect("keys live under the root");
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let tmp = dir.join(format!(".tmp-{}", hex::encode(rand::random::<[u8; 8]>())));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io(&tmp, e))?;
        f.write_all(value)
            .and_then(|()| f.sync_all())
            .map_err(|e| io(&tmp, e))?;
        Ok(tmp)
    }

    fn sync_dir(path: &Path) {
        if let Some(dir) = path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
    }
}

impl Kv for FileKv {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let path = self.path(key)?;
        match std::fs::read(&path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path, e)),
        }
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        let path = self.path(key)?;
        let tmp = self.temp(&path, &value)?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        Self::sync_dir(&path);
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, value: Vec<u8>) -> Result<bool, KvError> {
        let path = self.path(key)?;
        let tmp = self.temp(&path, &value)?;
        // A hard link fails if the name exists: an atomic create-if-absent.
        let r = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match r {
            Ok(()) => {
                Self::sync_dir(&path);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io(&path, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, KvError> {
        // Prefixes name directories here (`certs/`).
        let dir = self.root.join(prefix.trim_end_matches('/'));
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") || !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let value = std::fs::read(entry.path()).map_err(|e| io(&entry.path(), e))?;
            out.push((format!("{}/{name}", prefix.trim_end_matches('/')), value));
        }
        out.sort();
        Ok(out)
    }
}

/// Keys in etcd under a prefix, every call under a deadline.
#[derive(Clone)]
pub struct EtcdKv {
    client: Client,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for EtcdKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdKv")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdKv {
    /// A client for `etcd` (connects lazily) with keys under `prefix`.
    pub async fn connect(
        etcd: &ringmesh_config::Etcd,
        prefix: &str,
        timeout: Duration,
    ) -> Result<EtcdKv, KvError> {
        let opts = ringmesh_config::Etcd::default_options(timeout);
        let client = tokio::time::timeout(timeout, etcd.connect(opts))
            .await
            .map_err(|_| KvError::Unavailable("etcd connect timed out".into()))?
            .map_err(KvError::Unavailable)?;
        Ok(EtcdKv {
            client,
            prefix: prefix.to_string(),
            timeout,
        })
    }

    async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, KvError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(|e| KvError::Unavailable(format!("etcd: {e}"))),
            Err(_) => Err(KvError::Unavailable(format!(
                "etcd did not answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }
}

impl Kv for EtcdKv {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let mut kv = self.client.kv_client();
        let mut r = self
            .call(kv.get(format!("{}{key}", self.prefix), None))
            .await?;
        Ok(r.take_kvs()
            .into_iter()
            .next()
            .map(|kv| kv.into_key_value().1))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        let mut kv = self.client.kv_client();
        self.call(kv.put(format!("{}{key}", self.prefix), value, None))
            .await?;
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, value: Vec<u8>) -> Result<bool, KvError> {
        let k = format!("{}{key}", self.prefix);
        let txn = Txn::new()
            .when([Compare::version(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k, value, None)]);
        let mut kv = self.client.kv_client();
        Ok(self.call(kv.txn(txn)).await?.succeeded())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, KvError> {
        let mut kv = self.client.kv_client();
        let full = format!("{}{prefix}", self.prefix);
        let mut r = self
            .call(kv.get(full, Some(GetOptions::new().with_prefix())))
            .await?;
        Ok(r.take_kvs()
            .into_iter()
            .map(|kv| {
                let (k, v) = kv.into_key_value();
                (
                    String::from_utf8_lossy(&k[self.prefix.len()..]).into_owned(),
                    v,
                )
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_kv() {
        let dir = tempfile::tempdir().unwrap();
        let kv = FileKv::open(dir.path()).unwrap();
        assert_eq!(kv.get("ca").await.unwrap(), None);
        assert!(kv.put_if_absent("ca", b"one".to_vec()).await.unwrap());
        assert!(!kv.put_if_absent("ca", b"two".to_vec()).await.unwrap());
        assert_eq!(kv.get("ca").await.unwrap().unwrap(), b"one");
        kv.put("certs/b", b"2".to_vec()).await.unwrap();
        kv.put("certs/a", b"1".to_vec()).await.unwrap();
        kv.put("certs/a", b"1bis".to_vec()).await.unwrap();
        let l = kv.list("certs/").await.unwrap();
        assert_eq!(
            l,
            [
                ("certs/a".to_string(), b"1bis".to_vec()),
                ("certs/b".to_string(), b"2".to_vec())
            ]
        );
        assert!(kv.get("../x").await.is_err());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("ca"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "owner only");
    }
}
