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

/// Issue 14, item 11: the sections a manual page is expected to have beyond clap's, on every
/// page, with the project's exit codes and the variables the options read.
#[test]
fn every_page_has_examples_exit_status_environment_and_see_also() {
    let dir = tempfile::tempdir().unwrap();
    sentinel_cli::manpage::generate_to(dir.path()).unwrap();
    let pages = pages(dir.path());
    assert!(
        pages.contains_key("sentinel-doctor.1"),
        "{:?}",
        pages.keys()
    );
    for (name, text) in &pages {
        for section in [".SH \"EXIT STATUS\"", ".SH ENVIRONMENT", ".SH \"SEE ALSO\""] {
            assert!(text.contains(section), "{name} lacks {section}");
        }
        // The exit codes of `Error::status`, 0 to 8 and the signals'.
        for code in ["0", "2", "3", "5", "8", "130", "143"] {
            assert!(
                text.contains(&format!(".TP\n\\fB{code}\\fR\n")),
                "{name}: exit {code}"
            );
        }
        assert!(text.contains("\\fBRUST_LOG\\fR"), "{name}");
    }
    for name in [
        "sentinel.1",
        "sentinel-claim.1",
        "sentinel-run.1",
        "sentinel-doctor.1",
    ] {
        assert!(
            pages[name].contains(".SH EXAMPLES"),
            "{name} has no examples"
        );
    }
    let top = &pages["sentinel.1"];
    // From clap's env attributes, and those the CLI reads itself.
    for var in [
        "SENTINEL_REDIS_URL",
        "GITHUB_REPOSITORY",
        "GITHUB_TOKEN",
        "GH_TOKEN",
    ] {
        assert!(
            top.contains(&format!(".TP\n\\fB{var}\\fR\n")),
            "sentinel.1 lacks {var}"
        );
    }
    assert!(top.contains("\\fBsentinel\\-claim\\fR(1)"), "see also");
    assert!(
        pages["sentinel-claim.1"].contains("\\fBsentinel\\fR(1)"),
        "see also"
    );
    // serve takes no GitHub options, so their variables are not its.
    assert!(!pages["sentinel-serve.1"].contains("\\fBGITHUB_TOKEN\\fR"));
    assert!(pages["sentinel-serve.1"].contains("\\fBSENTINEL_PEER_TOKEN\\fR"));
}
