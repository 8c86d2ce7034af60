//! Replays the fuzz corpus (fuzz/corpus/<target>/) through the same entry points the fuzz targets
//! use, on stable Rust: every seed and every crash the fuzzer once found stays a regression test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use signproxy::fuzzing;

fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no seeds", dir.display());
    files
}

/// Runs every seed, naming the one that fails.
fn replay(target: &str, run: fn(&[u8])) {
    for path in seeds(target) {
        let data = std::fs::read(&path).unwrap();
        if let Err(panic) = std::panic::catch_unwind(|| run(&data)) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{target}: {} failed: {message}", path.display());
        }
    }
}

#[test]
fn tiktok_canonical() {
    replay("tiktok_canonical", fuzzing::tiktok_canonical);
}

#[test]
fn ebay_signature_base() {
    replay("ebay_signature_base", fuzzing::ebay_signature_base);
}

#[test]
fn config_parse() {
    replay("config_parse", fuzzing::config_parse);
}

#[test]
fn request_target() {
    replay("request_target", fuzzing::request_target);
}

#[test]
fn addr_classify() {
    replay("addr_classify", fuzzing::addr_classify);
}

#[test]
fn every_marketplace() {
    replay("every_marketplace", fuzzing::every_marketplace);
}
