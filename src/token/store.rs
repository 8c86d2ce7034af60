//! The persisted token state: one JSON file in the state folder, written atomically (temp file,
//! fsync, rename, fsync of the folder; mode 0600) so a crash leaves the old state or the new one,
//! never half of either. A corrupt file is set aside with a clear error, never overwritten.

use crate::clock::Clock as _;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::state_dir::{create_private_dir, exposure_warning};

pub const FILE_NAME: &str = "tokens.json";
const FORMAT_VERSION: u32 = 1;

/// A store that failed: which one (a path, or a Redis URL without credentials) and why.
#[derive(Debug, thiserror::Error)]
#[error("token store {store}: {message}")]
pub struct StoreError {
    pub store: String,
    pub message: String,
}

/// What is kept for one profile. Holds secrets: no `Debug`.
#[derive(Serialize, Deserialize, Clone, Default, PartialEq, Eq)]
pub struct StoredProfile {
    /// Fingerprint of the configured credential this state descends from. When the config
    /// changes (a new authorization), the stored state no longer applies.
    pub seed: String,
    pub access_token: Option<String>,
    pub expires_at: Option<u64>,
    pub obtained_at: Option<u64>,
    pub refresh_token: Option<String>,
    pub refresh_expires_at: Option<u64>,
}

#[derive(Serialize, Deserialize, Default)]
struct FileContents {
    version: u32,
    profiles: BTreeMap<String, StoredProfile>,
}

pub struct TokenStore {
    path: PathBuf,
    profiles: Mutex<BTreeMap<String, StoredProfile>>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl TokenStore {
    /// Opens (or starts) the store in `dir`. A corrupt file is renamed aside and reported in the
    /// returned warning; the store then starts empty.
    pub fn open(dir: &Path) -> Result<(TokenStore, Option<String>), StoreError> {
        let path = Self::path_in(dir);
        let fail = |message: String| StoreError {
            store: path.display().to_string(),
            message,
        };
        create_private_dir(dir)
            .map_err(|e| fail(format!("cannot create the state folder ({e})")))?;
        let mut warning = None;
        let profiles = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<FileContents>(&bytes) {
                Ok(contents) if contents.version == FORMAT_VERSION => contents.profiles,
                parsed => {
                    let reason = match parsed {
                        Ok(c) => format!("unknown format version {}", c.version),
                        Err(e) => e.to_string(),
                    };
                    let aside = dir.join(format!(
                        "{FILE_NAME}.corrupt-{}",
                        crate::clock::SystemClock.now().secs()
                    ));
                    std::fs::rename(&path, &aside).map_err(|e| {
                        fail(format!(
                            "is unreadable ({reason}) and could not be set aside ({e})"
                        ))
                    })?;
                    warning = Some(format!(
                        "{} was unreadable ({reason}); kept as {} and starting without stored tokens",
                        path.display(),
                        aside.display()
                    ));
                    BTreeMap::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(fail(format!("cannot read ({e})"))),
        };
        Ok((
            TokenStore {
                path,
                profiles: Mutex::new(profiles),
            },
            warning,
        ))
    }

    /// Where the store in `dir` keeps its file.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(FILE_NAME)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A warning when the token file in `dir` exists and group or others can read it.
    pub fn permission_warning(dir: &Path) -> Option<String> {
        exposure_warning(&Self::path_in(dir), "access and refresh tokens")
    }

    /// The profiles it holds state for.
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    pub fn get(&self, profile: &str) -> Option<StoredProfile> {
        self.lock().get(profile).cloned()
    }

    /// Records `entry` and writes the whole file before returning: callers rely on a rotated
    /// refresh token being on disk before it is used.
    pub fn put(&self, profile: &str, entry: StoredProfile) -> Result<(), StoreError> {
        let mut profiles = self.lock();
        profiles.insert(profile.to_owned(), entry);
        let contents = FileContents {
            version: FORMAT_VERSION,
            profiles: profiles.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&contents).map_err(|e| StoreError {
            store: self.path.display().to_string(),
            message: format!("cannot encode ({e})"),
        })?;
        // Held across the write so that two profiles' updates cannot interleave on disk.
        write_atomically(&self.path, &bytes).map_err(|e| StoreError {
            store: self.path.display().to_string(),
            message: format!("cannot write ({e})"),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, StoredProfile>> {
        self.profiles.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The temp file a write goes through (same folder, so the rename is atomic).
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// First half of an atomic write: the new contents, durable, beside the real file.
pub fn write_temp(path: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let tmp = temp_path(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(tmp)
}

/// Second half: the rename that makes it current, then the folder entry made durable.
pub fn commit(tmp: &Path, path: &Path) -> std::io::Result<()> {
    std::fs::rename(tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            // Not every platform can fsync a directory; the rename itself is already atomic.
            let _ = d.sync_all();
        }
    }
    Ok(())
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = write_temp(path, bytes)?;
    commit(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(rt: &str) -> StoredProfile {
        StoredProfile {
            seed: "seed".into(),
            access_token: Some("at".into()),
            expires_at: Some(100),
            obtained_at: Some(1),
            refresh_token: Some(rt.into()),
            refresh_expires_at: None,
        }
    }

    #[test]
    fn round_trip_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let (store, warning) = TokenStore::open(dir.path()).unwrap();
        assert!(warning.is_none());
        store.put("tiktok.default", entry("rt1")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(store.path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, _) = TokenStore::open(dir.path()).unwrap();
        assert!(again.get("tiktok.default") == Some(entry("rt1")));
    }

    #[cfg(unix)]
    #[test]
    fn the_state_folder_it_creates_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("new").join("state");
        let (store, _) = TokenStore::open(&state).unwrap();
        store.put("p", entry("rt")).unwrap();
        for dir in [root.path().join("new"), state] {
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_token_file_others_can_read_is_reported() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            TokenStore::permission_warning(dir.path()),
            None,
            "no file yet"
        );
        let (store, _) = TokenStore::open(dir.path()).unwrap();
        store.put("p", entry("rt")).unwrap();
        assert_eq!(
            TokenStore::permission_warning(dir.path()),
            None,
            "written 0600"
        );
        std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        let warning = TokenStore::permission_warning(dir.path()).expect("0644 is reported");
        assert!(
            warning.contains(&format!("chmod 600 {}", store.path().display())),
            "{warning}"
        );
    }

    #[test]
    fn a_crash_between_write_and_rename_leaves_the_old_state() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = TokenStore::open(dir.path()).unwrap();
        store.put("p", entry("old")).unwrap();
        // The new state reached the temp file, then the process died before the rename.
        write_temp(
            store.path(),
            b"{\"version\":1,\"profiles\":{\"p\":{\"seed\":\"s\",\"refr",
        )
        .unwrap();
        let (after, warning) = TokenStore::open(dir.path()).unwrap();
        assert!(warning.is_none());
        assert!(after.get("p") == Some(entry("old")));
        // The next write replaces the stale temp file.
        after.put("p", entry("new")).unwrap();
        assert!(!temp_path(after.path()).exists());
        let (last, _) = TokenStore::open(dir.path()).unwrap();
        assert!(last.get("p") == Some(entry("new")));
    }

    #[test]
    fn corrupt_file_is_set_aside_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"{not json").unwrap();
        let (store, warning) = TokenStore::open(dir.path()).unwrap();
        let warning = warning.unwrap();
        assert!(
            warning.contains("unreadable") && warning.contains(".corrupt-"),
            "{warning}"
        );
        assert!(store.get("p").is_none());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(std::fs::read(aside[0].path()).unwrap(), b"{not json");
    }
}
