//! `completions/` holds generated scripts; this keeps them in sync with the CLI definition.
//! Regenerate with `SENTINEL_BLESS=1 cargo test completions`.

use clap_complete::Shell;

use crate::support::{bin, code};

const SHELLS: [(Shell, &str); 4] = [
    (Shell::Bash, "sentinel.bash"),
    (Shell::Zsh, "_sentinel"),
    (Shell::Fish, "sentinel.fish"),
    (Shell::PowerShell, "_sentinel.ps1"),
];

#[test]
fn committed_completion_scripts_match_the_cli() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("completions");
    let bless = std::env::var_os("SENTINEL_BLESS").is_some();
    for (shell, file) in SHELLS {
        let fresh = sentinel_cli::commands::completions::script(shell);
        let path = dir.join(file);
        if bless {
            std::fs::write(&path, &fresh).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == fresh,
            "{} is out of date: run SENTINEL_BLESS=1 cargo test completions",
            path.display()
        );
    }
}

#[test]
fn the_binary_prints_the_same_scripts() {
    let out = std::process::Command::new(bin())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0);
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        printed.trim_end(),
        sentinel_cli::commands::completions::script(Shell::Bash).trim_end()
    );
}
