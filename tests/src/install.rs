//! Finds server binaries, installing their Debian packages when they are missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

static APT: Mutex<()> = Mutex::new(());

/// The path of `binary`: on `PATH` or in one of `extra_dirs` (globs of one `*` allowed).
pub fn find(binary: &str, extra_dirs: &[&str]) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut dirs: Vec<PathBuf> = path_dirs;
    for pattern in extra_dirs {
        dirs.extend(expand(pattern));
    }
    dirs.into_iter()
        .map(|d| d.join(binary))
        .find(|candidate| candidate.is_file())
}

/// Like [`find`], but runs `apt-get install -y <packages>` first when the binary is missing.
pub fn find_or_install(binary: &str, extra_dirs: &[&str], packages: &[&str]) -> PathBuf {
    if let Some(found) = find(binary, extra_dirs) {
        return found;
    }
    let _guard = APT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = find(binary, extra_dirs) {
        return found;
    }
    // DPkg::Lock::Timeout makes concurrent test processes wait for each other's apt runs.
    let apt = |args: &[&str]| {
        let status = Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=600", "-q", "-y"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "apt-get {args:?} failed; install {packages:?} by hand"
        );
    };
    apt(&["update"]);
    let mut install = vec!["install", "--no-install-recommends"];
    install.extend_from_slice(packages);
    apt(&install);
    find(binary, extra_dirs)
        .unwrap_or_else(|| panic!("{binary} still missing after installing {packages:?}"))
}

/// Expands a directory pattern with at most one `*` component, e.g. `/usr/lib/postgresql/*/bin`.
fn expand(pattern: &str) -> Vec<PathBuf> {
    let Some((head, tail)) = pattern.split_once('*') else {
        return vec![PathBuf::from(pattern)];
    };
    let parent = Path::new(head);
    let mut found: Vec<PathBuf> = std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let tail = tail.trim_start_matches('/');
            e.path().join(tail)
        })
        .filter(|p| p.is_dir())
        .collect();
    // Newest version first.
    found.sort();
    found.reverse();
    found
}
