//! What shells and `man` need, generated from the command-line definition itself so it
//! never drifts from the flags: completion scripts (`causeway completion bash`) and man
//! pages, one per command (`causeway man --out-dir target/man`).

use std::path::{Path, PathBuf};

use clap::CommandFactory as _;

/// Writes `shell`'s completion script for `causeway` to standard output. A reader that
/// stops early (`| head`) ends it quietly.
pub(crate) fn completion(shell: clap_complete::Shell) {
    use std::io::Write as _;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut super::Cli::command(), "causeway", &mut script);
    let _ = std::io::stdout().write_all(&script);
}

/// Writes the man pages (`causeway.1`, `causeway-apply.1`, ...) into `dir`, creating
/// it; the pages written.
pub(crate) fn man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    clap_mangen::generate_to(super::Cli::command(), dir)
        .map_err(|e| anyhow::anyhow!("writing man pages into {}: {e}", dir.display()))?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    Ok(pages)
}

#[cfg(test)]
mod tests {
    #[test]
    fn man_pages_cover_every_command() {
        let dir = tempfile::tempdir().unwrap();
        let pages = super::man_pages(dir.path()).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "causeway.1",
            "causeway-apply.1",
            "causeway-dataplane.1",
            "causeway-up.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        let top = std::fs::read_to_string(dir.path().join("causeway.1")).unwrap();
        assert!(top.contains(".TH causeway"), "{top}");
        assert!(top.contains("multi\\-zone service mesh"), "{top}");
    }
}
