//! `github-emulator`: runs the emulator as a standalone server for poking at sentinel by hand.
//! It seeds one repository, its owner (with a token) and one open issue, prints how to reach
//! them, and serves until interrupted (Ctrl-C ends the process; there is nothing to save).
//!
//! ```text
//! cargo run -p github-emulator -- --port 0 [--repo owner/name] [--private]
//! ```

use github_emulator::{Emulator, UserKind};

const USAGE: &str = "usage: github-emulator [--port N] [--repo OWNER/NAME] [--private]";

fn main() {
    let mut port: u16 = 0;
    let mut repo = String::from("octo-org/octo-repo");
    let mut public = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                port = args
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| exit_usage("--port needs a number"))
            }
            "--repo" => {
                repo = args
                    .next()
                    .filter(|r| r.split('/').count() == 2)
                    .unwrap_or_else(|| exit_usage("--repo needs OWNER/NAME"))
            }
            "--private" => public = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => exit_usage(&format!("unknown argument {other:?}")),
        }
    }

    let emu = Emulator::start_on(port);
    let owner = repo.split('/').next().unwrap_or("octo-org").to_string();
    let token = emu.add_user(&owner, UserKind::User);
    emu.create_repo(&repo, &owner, public);
    let issue = emu.create_issue(&repo, "Try claiming me");

    println!("github-emulator listening on {}", emu.url());
    println!(
        "repo:  {repo} ({})",
        if public { "public" } else { "private" }
    );
    println!("owner: {owner}");
    println!("token: {token}");
    println!("issue: #{issue}");
    println!();
    println!(
        "try: sentinel --api-url {} --repo {repo} --token {token} claim {issue}",
        emu.url()
    );
    println!("Ctrl-C to stop.");

    // The server runs on the emulator's own thread; this one only has to stay alive.
    loop {
        std::thread::park();
    }
}

fn exit_usage(problem: &str) -> ! {
    eprintln!("github-emulator: {problem}\n{USAGE}");
    std::process::exit(2);
}
