//! `man/` holds the generated manual pages; this keeps them in sync with the CLI definition.
//! Regenerate with `SENTINEL_BLESS=1 cargo test manpages`.

use std::collections::BTreeMap;
use std::path::Path;

/// `*.1` file name -> contents.
fn pages(dir: &Path) -> BTreeMap<String, String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".1"))
        .map(|name| {
            let text = std::fs::read_to_string(dir.join(&name)).unwrap();
            (name, text)
        })
        .collect()
}

#[test]
fn committed_manpages_match_the_cli() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    if std::env::var_os("SENTINEL_BLESS").is_some() {
        for name in pages(&dir).keys() {
            std::fs::remove_file(dir.join(name)).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        sentinel_cli::manpage::generate_to(&dir).unwrap();
        return;
    }
    let fresh_dir = tempfile::tempdir().unwrap();
    sentinel_cli::manpage::generate_to(fresh_dir.path()).unwrap();
    let fresh = pages(fresh_dir.path());
    let committed = pages(&dir);
    assert_eq!(
        committed.keys().collect::<Vec<_>>(),
        fresh.keys().collect::<Vec<_>>(),
        "man/ has other pages than the CLI: run SENTINEL_BLESS=1 cargo test manpages"
    );
    for (name, text) in &fresh {
        assert!(
            committed[name] == *text,
            "man/{name} is out of date: run SENTINEL_BLESS=1 cargo test manpages"
        );
    }
}

#[test]
fn every_subcommand_has_a_page_that_documents_its_options() {
    let dir = tempfile::tempdir().unwrap();
    sentinel_cli::manpage::generate_to(dir.path()).unwrap();
    let pages = pages(dir.path());
    for cmd in [
        "claim",
        "release",
        "status",
        "heartbeat",
        "completions",
        "metrics",
    ] {
        assert!(pages.contains_key(&format!("sentinel-{cmd}.1")), "{cmd}");
    }
    let top = &pages["sentinel.1"];
    assert!(top.contains(".TH sentinel 1"), "{top}");
    assert!(
        top.contains("SENTINEL_TOKEN"),
        "environment fallbacks are documented"
    );
    assert!(pages["sentinel-metrics.1"].contains("prometheus"));
}
