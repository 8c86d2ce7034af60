//! The layout the README promises, checked on the source: no import cycle between top-level
//! modules, and no code outside `src/marketplace/NAME/` that names a marketplace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file without its unit tests and without comments: the code that ships.
fn shipped_code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => &text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(src()).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "main" || top == "lib" {
            continue;
        }
        let code = shipped_code(file);
        let deps = graph.entry(top.clone()).or_default();
        for part in code.split("crate::").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != top {
                deps.insert(name);
            }
        }
    }
    assert!(graph.contains_key("marketplace") && graph.contains_key("proxy"));
    // Depth-first search for a path from a module back to itself.
    fn reaches(
        graph: &BTreeMap<String, BTreeSet<String>>,
        from: &str,
        to: &str,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        graph
            .get(from)
            .into_iter()
            .flatten()
            .any(|next| next == to || (seen.insert(next.clone()) && reaches(graph, next, to, seen)))
    }
    for module in graph.keys() {
        assert!(
            !reaches(&graph, module, module, &mut BTreeSet::new()),
            "`{module}` imports itself through other modules: {graph:?}"
        );
    }
    // The seam's direction: marketplaces know nothing of config, tokens or the proxy.
    let marketplace = &graph["marketplace"];
    for above in ["config", "token", "proxy", "route", "upstream", "cli"] {
        assert!(!marketplace.contains(above), "marketplace imports {above}");
    }
}

/// Marketplace ids come from the registry; each has its folder. Other folders under
/// `src/marketplace/` (`iop/`) hold a protocol several marketplaces share: they name none of
/// them, and a marketplace folder may import them.
#[test]
fn only_a_marketplace_folder_names_its_marketplace() {
    let folder = src().join("marketplace");
    let ids: Vec<String> = signproxy::marketplace::MARKETPLACES
        .iter()
        .map(|m| m.id().to_owned())
        .collect();
    assert!(ids.len() >= 2, "{ids:?}");
    for id in &ids {
        assert!(
            folder.join(id).join("mod.rs").is_file(),
            "marketplace `{id}` has no folder src/marketplace/{id}/"
        );
    }
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for file in files {
        let code = shipped_code(&file).to_ascii_lowercase();
        let rel = file
            .strip_prefix(src())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for id in &ids {
            let own = rel.starts_with(&format!("marketplace/{id}/"));
            // The registry's one line per marketplace, and the fuzz harness that drives each signer.
            let registry = rel == "marketplace/mod.rs" || rel == "fuzzing.rs";
            if !own && !registry {
                assert!(
                    !code.contains(id.as_str()),
                    "{rel} names the marketplace `{id}` outside its folder"
                );
            }
        }
    }
}
