//! Files that hold secrets: the state folder (and any folder made for the CA) is created private,
//! and a secret-bearing file that group or others can read is reported with the `chmod` fix.

use std::io;
use std::path::Path;

/// Creates `path` and any missing parents. On unix every folder this creates is mode 0700; folders
/// that already exist are left as they are (they may be shared on purpose, e.g. `/var/lib`).
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

/// A warning when `path` exists and group or others may read or write it (a writable key or
/// config can be swapped for one an attacker chose); `holds` says what is at stake
/// (e.g. "the CA private key"). `None` when the file is private, absent, or unreadable to `stat`.
pub fn exposure_warning(path: &Path, holds: &str) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        if mode & 0o066 == 0 {
            return None;
        }
        let access = if mode & 0o022 != 0 {
            "readable or writable"
        } else {
            "readable"
        };
        let shown = shell_quote(&path.display().to_string());
        Some(format!(
            "{} holds {holds} and is {access} by group or others (mode {mode:04o}): chmod 600 {shown}",
            path.display()
        ))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, holds);
        None
    }
}

/// The path as one shell word, so the printed fix can be pasted as it is.
#[cfg(unix)]
fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@%,".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_every_missing_folder_private_and_leaves_existing_ones_alone() {
        let root = tempfile::tempdir().unwrap();
        let shared = root.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        let deep = shared.join("a").join("b").join("state");
        create_private_dir(&deep).unwrap();
        for dir in [shared.join("a"), shared.join("a/b"), deep.clone()] {
            assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        }
        assert_eq!(mode(&shared), 0o755, "an existing parent keeps its mode");
        // Already there: fine, and its mode is not changed.
        std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o750)).unwrap();
        create_private_dir(&deep).unwrap();
        assert_eq!(mode(&deep), 0o750);
    }

    #[test]
    fn a_file_others_can_read_is_reported_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key.pem");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let warning = exposure_warning(&file, "a key").expect("0644 is reported");
        assert!(
            warning.contains(&format!("chmod 600 {}", file.display())) && warning.contains("0644"),
            "{warning}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(
            exposure_warning(&file, "a key").is_some(),
            "group-readable too"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(exposure_warning(&file, "a key"), None);
        assert_eq!(exposure_warning(&dir.path().join("absent"), "a key"), None);
    }

    #[test]
    fn the_fix_quotes_a_path_with_spaces() {
        assert_eq!(shell_quote("/a/b.pem"), "/a/b.pem");
        assert_eq!(shell_quote("/my dir/it's"), r"'/my dir/it'\''s'");
    }
}
