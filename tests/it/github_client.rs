//! The HTTP layer on its own, against the emulator: conditional pagination and no blind POST retry.

use github_emulator::Fault;
use octocrab::models::issues::Comment;
use sentinel::github::client::{Client, ClientOptions, Sent};
use sentinel::secret::Secret;

use crate::support::{Gh, REPO};

fn client(gh: &Gh) -> Client {
    Client::new(ClientOptions::new(
        &gh.emu.url(),
        Some(Secret::new(gh.alice.clone())),
    ))
    .unwrap()
}

#[tokio::test]
async fn unchanged_pages_are_re_read_with_304s_that_cost_nothing() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "many");
    for i in 0..250 {
        gh.emu.add_comment(REPO, issue, "bob", &format!("c{i}"));
    }
    let c = client(&gh);
    let first = format!("/repos/{REPO}/issues/{issue}/comments?per_page=100");
    let (a, _) = c.get_all::<Comment>(&first).await.unwrap();
    let remaining = gh.emu.rate_limit_remaining(&gh.alice);
    gh.emu.clear_requests();
    let (b, _) = c.get_all::<Comment>(&first).await.unwrap();
    assert_eq!(a.len(), 250);
    assert_eq!(
        a.iter().map(|c| c.id).collect::<Vec<_>>(),
        b.iter().map(|c| c.id).collect::<Vec<_>>()
    );
    let statuses: Vec<u16> = gh.emu.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![304, 304, 304]);
    assert_eq!(gh.emu.rate_limit_remaining(&gh.alice), remaining);
    assert!(
        c.last_date().is_some(),
        "GitHub's clock is known from the Date header"
    );
}

#[tokio::test]
async fn a_post_is_never_resent_blindly() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "once");
    gh.emu.inject(
        "POST",
        "/comments",
        Fault::ErrorAfterWrite { status: 502 },
        1,
    );
    let c = client(&gh);
    let path = format!("/repos/{REPO}/issues/{issue}/comments");
    let sent = c
        .post_once(&path, &serde_json::json!({"body": "hi"}))
        .await
        .unwrap();
    assert!(matches!(sent, Sent::Unknown(_)), "{sent:?}");
    assert_eq!(
        gh.emu.comments(REPO, issue).len(),
        1,
        "applied once, not retried"
    );
    let posts = gh.count_method("POST");
    assert_eq!(posts, 1);
}
