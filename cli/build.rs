//! Stamps the binary with the commit it was built from (`causeway --version`), from
//! `git` when the source is a checkout; `unknown` otherwise (a source tarball).

use std::path::Path;
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=CAUSEWAY_GIT_COMMIT={commit}");
    // Built again when HEAD moves: HEAD itself (a checkout) and the branch it points at
    // (a commit), wherever the git directory is (a worktree's `.git` is a file).
    let git_dir = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned());
    if let Some(dir) = git_dir {
        let dir = Path::new(&dir);
        let head = dir.join("HEAD");
        println!("cargo:rerun-if-changed={}", head.display());
        if let Ok(text) = std::fs::read_to_string(&head)
            && let Some(branch) = text.trim().strip_prefix("ref: ")
        {
            let common = Command::new("git")
                .args(["rev-parse", "--git-common-dir"])
                .output()
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|| dir.display().to_string());
            println!("cargo:rerun-if-changed={}/{branch}", common);
            println!("cargo:rerun-if-changed={}/packed-refs", common);
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
