//! Fixtures and emulator fidelity: the payloads in `fixtures/` (GitHub's documented example
//! responses) deserialize into the octocrab models sentinel uses; the emulator's real responses
//! deserialize into the same models and carry the same top-level fields; and the emulator shows
//! the GitHub behaviours the lock protocol must survive (pagination, ETags, 301/404/410, silent
//! assignee drops, locked issues, lost responses, read lag, rate limits).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::Duration;

use github_emulator::{Emulator, Fault, Permission, UserKind};
use http::{HeaderMap, HeaderValue, StatusCode};
use octocrab::Octocrab;
use octocrab::models::issues::{Comment, Issue};
use octocrab::models::{Author, Label, UserProfile};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const REPO: &str = "octocat/hello-world";

fn fixture(name: &str) -> Value {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn model<T: DeserializeOwned>(what: &str, v: &Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{what}: {e}\n{v:#}"))
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

#[track_caller]
fn assert_same_keys(what: &str, emulated: &Value, fixture: &Value) {
    let (e, f) = (keys(emulated), keys(fixture));
    let missing: Vec<_> = f.difference(&e).collect();
    let extra: Vec<_> = e.difference(&f).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: emulator lacks {missing:?}, adds {extra:?}"
    );
}

/// A public repo owned by `octocat`, with a Write collaborator `dev`, a stranger `outsider` and
/// an Actions-style bot that has Write access.
struct World {
    emu: Emulator,
    owner: String,
    dev: String,
    outsider: String,
    bot: String,
}

fn world() -> World {
    let emu = Emulator::start();
    let owner = emu.add_user("octocat", UserKind::User);
    let dev = emu.add_user("dev", UserKind::User);
    let outsider = emu.add_user("outsider", UserKind::User);
    let bot = emu.add_user("github-actions[bot]", UserKind::Bot);
    emu.create_repo(REPO, "octocat", true);
    emu.add_collaborator(REPO, "dev", Permission::Write);
    emu.add_collaborator(REPO, "github-actions[bot]", Permission::Write);
    World {
        emu,
        owner,
        dev,
        outsider,
        bot,
    }
}

/// Built the way the product builds it. Paths passed to the raw methods must stay relative:
/// octocrab only sends the token to api.github.com or to relative URIs (see the pagination test).
fn crab(emu: &Emulator, token: &str) -> Octocrab {
    Octocrab::builder()
        .base_uri(emu.url())
        .unwrap()
        .personal_token(token.to_string())
        .build()
        .unwrap()
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("{e}: {:?} {}", self.status, self.text))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn call(crab: &Octocrab, method: &str, path: &str, body: Option<Value>) -> Resp {
    let resp = match method {
        "GET" => crab._get(path).await,
        "POST" => crab._post(path, body.as_ref()).await,
        "PATCH" => crab._patch(path, body.as_ref()).await,
        "DELETE" => crab._delete(path, body.as_ref()).await,
        other => panic!("unsupported method {other}"),
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = crab.body_to_string(resp).await.unwrap();
    Resp {
        status,
        headers,
        text,
    }
}

async fn get(crab: &Octocrab, path: &str) -> Resp {
    call(crab, "GET", path, None).await
}

fn issue_path(n: u64) -> String {
    format!("/repos/{REPO}/issues/{n}")
}

// ----- (a) fixtures deserialize into octocrab's models -----

#[test]
fn fixtures_deserialize_into_octocrab_models() {
    let issue: Issue = model("issue.json", &fixture("issue.json"));
    assert_eq!(issue.number, 1347);
    assert!(issue.pull_request.is_none());
    assert_eq!(issue.user.login, "octocat");

    let pr: Issue = model(
        "issue_pull_request.json",
        &fixture("issue_pull_request.json"),
    );
    assert!(pr.pull_request.is_some());
    assert!(pr.html_url.path().contains("/pull/"));

    let issues: Vec<Issue> = model("issues_list.json", &fixture("issues_list.json"));
    assert_eq!(issues.len(), 2);

    let comment: Comment = model("comment.json", &fixture("comment.json"));
    assert_eq!(comment.body.as_deref(), Some("Me too"));
    assert!(comment.issue_url.is_some());

    let comments: Vec<Comment> = model("comments_list.json", &fixture("comments_list.json"));
    assert_eq!(comments.len(), 1);

    let profile: UserProfile = model("user.json", &fixture("user.json"));
    assert_eq!(profile.login, "octocat");
    let author: Author = model("user.json", &fixture("user.json"));
    assert_eq!(author.r#type, "User");

    let labels: Vec<Label> = model("labels.json", &fixture("labels.json"));
    assert_eq!(labels[0].name, "bug");

    for name in [
        "error_bad_credentials.json",
        "error_validation_failed.json",
        "error_rate_limit.json",
    ] {
        let v = fixture(name);
        assert!(v["message"].is_string(), "{name}");
        assert!(v["documentation_url"].is_string(), "{name}");
    }
    assert!(fixture("error_validation_failed.json")["errors"].is_array());
}

// ----- (b) the emulator's responses have the same shapes -----

#[tokio::test]
async fn emulated_issues_match_the_fixtures() {
    let w = world();
    let n = w.emu.create_issue(REPO, "Found a bug");
    let pr = w.emu.create_pull_request(REPO, "Fix the bug");
    assert_eq!(pr, n + 1, "issues and pull requests share numbers");
    w.emu.add_labels(REPO, n, &["bug"]);
    let crab = crab(&w.emu, &w.owner);
    let r = call(
        &crab,
        "POST",
        &format!("{}/assignees", issue_path(n)),
        Some(json!({"assignees": ["dev"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);

    let issue = get(&crab, &issue_path(n)).await.json();
    assert_same_keys("issue", &issue, &fixture("issue.json"));
    assert_same_keys("issue.user", &issue["user"], &fixture("issue.json")["user"]);
    assert_same_keys(
        "issue.labels[0]",
        &issue["labels"][0],
        &fixture("issue.json")["labels"][0],
    );
    let typed: Issue = model("emulated issue", &issue);
    assert_eq!(typed.assignees[0].login, "dev");
    assert_eq!(typed.labels[0].name, "bug");
    assert!(typed.pull_request.is_none());
    assert_eq!(
        typed.url.as_str(),
        format!("{}{}", w.emu.url(), issue_path(n))
    );
    assert_eq!(
        typed.html_url.as_str(),
        format!("https://github.com/{REPO}/issues/{n}")
    );

    let pr_json = get(&crab, &issue_path(pr)).await.json();
    assert_same_keys(
        "pull request",
        &pr_json,
        &fixture("issue_pull_request.json"),
    );
    let typed: Issue = model("emulated pull request", &pr_json);
    assert!(typed.pull_request.is_some());
    assert!(typed.html_url.path().ends_with(&format!("/pull/{pr}")));

    // The high-level API sentinel uses must be happy too.
    let via_api = crab.issues("octocat", "hello-world").get(n).await.unwrap();
    assert_eq!(via_api.number, n);

    let list = get(&crab, &format!("/repos/{REPO}/issues?state=all"))
        .await
        .json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "pull requests are listed with issues");
    let fixtures = fixture("issues_list.json");
    for item in list {
        let same_kind = if item.get("pull_request").is_some() {
            &fixtures[0]
        } else {
            &fixtures[1]
        };
        assert_same_keys("issues list item", item, same_kind);
    }
    let _: Vec<Issue> = model("emulated issue list", &Value::Array(list.clone()));

    let labelled = get(
        &crab,
        &format!("/repos/{REPO}/issues?labels=bug&state=open"),
    )
    .await
    .json();
    assert_eq!(labelled.as_array().unwrap().len(), 1);
    assert_eq!(labelled[0]["number"], n);
}

#[tokio::test]
async fn emulated_comments_user_and_labels_match_the_fixtures() {
    let w = world();
    let n = w.emu.create_issue(REPO, "x");
    let dev = crab(&w.emu, &w.dev);

    let created = call(
        &dev,
        "POST",
        &format!("{}/comments", issue_path(n)),
        Some(json!({"body": "Me too"})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let created = created.json();
    assert_same_keys("created comment", &created, &fixture("comment.json"));
    let typed: Comment = model("created comment", &created);
    assert_eq!(
        typed.author_association,
        Some(octocrab::models::AuthorAssociation::Collaborator)
    );
    assert!(typed.id.0 > i32::MAX as u64, "comment ids live above 2^31");
    assert_eq!(
        typed.html_url.as_str(),
        format!(
            "https://github.com/{REPO}/issues/{n}#issuecomment-{}",
            typed.id
        )
    );

    let single = get(&dev, &format!("/repos/{REPO}/issues/comments/{}", typed.id))
        .await
        .json();
    assert_same_keys("single comment", &single, &fixture("comment.json"));
    let _: Comment = model("single comment", &single);

    let list = get(&dev, &format!("{}/comments", issue_path(n)))
        .await
        .json();
    assert_same_keys(
        "comment list item",
        &list[0],
        &fixture("comments_list.json")[0],
    );
    let _: Vec<Comment> = model("comment list", &list);

    let repo_wide = get(&dev, &format!("/repos/{REPO}/issues/comments"))
        .await
        .json();
    assert_same_keys(
        "repo comment list item",
        &repo_wide[0],
        &fixture("comments_list.json")[0],
    );
    assert_eq!(
        repo_wide[0]["issue_url"],
        format!("{}{}", w.emu.url(), issue_path(n))
    );

    let page = dev
        .issues("octocat", "hello-world")
        .list_comments(n)
        .send()
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);

    let updated = dev
        .issues("octocat", "hello-world")
        .update_comment(typed.id, "Me three")
        .await
        .unwrap();
    assert_eq!(updated.body.as_deref(), Some("Me three"));

    let user = get(&dev, "/user").await.json();
    assert_same_keys("user", &user, &fixture("user.json"));
    let profile: UserProfile = model("emulated user", &user);
    assert_eq!(profile.login, "dev");
    let author: Author = dev.current().user().await.unwrap();
    assert_eq!(author.login, "dev");

    let labels = call(
        &dev,
        "POST",
        &format!("{}/labels", issue_path(n)),
        Some(json!({"labels": ["lock:held", "bug"]})),
    )
    .await;
    assert_eq!(labels.status, StatusCode::OK);
    let labels = labels.json();
    assert_same_keys("label", &labels[0], &fixture("labels.json")[0]);
    let typed: Vec<Label> = model("emulated labels", &labels);
    assert_eq!(
        typed.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        ["lock:held", "bug"]
    );

    let removed = call(
        &dev,
        "DELETE",
        &format!("{}/labels/lock:held", issue_path(n)),
        None,
    )
    .await;
    assert_eq!(removed.status, StatusCode::OK);
    assert_eq!(removed.json().as_array().unwrap().len(), 1);
    let again = call(
        &dev,
        "DELETE",
        &format!("{}/labels/lock:held", issue_path(n)),
        None,
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(again.json()["message"], "Label does not exist");
}

#[tokio::test]
async fn emulated_errors_match_the_fixtures() {
    let w = world();
    let n = w.emu.create_issue(REPO, "x");

    let bad = crab(&w.emu, "ghp_not_a_token");
    let r = get(&bad, "/user").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json(), fixture("error_bad_credentials.json"));
    match bad.current().user().await {
        Err(octocrab::Error::GitHub { source, .. }) => {
            assert_eq!(source.status_code, StatusCode::UNAUTHORIZED);
            assert_eq!(source.message, "Bad credentials");
        }
        other => panic!("expected a GitHub error, got {other:?}"),
    }

    let dev = crab(&w.emu, &w.dev);
    let r = call(
        &dev,
        "POST",
        &format!("{}/comments", issue_path(n)),
        Some(json!({"body": ""})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_same_keys("422", &r.json(), &fixture("error_validation_failed.json"));
    assert_eq!(
        r.json()["errors"],
        fixture("error_validation_failed.json")["errors"]
    );
    assert!(w.emu.comments(REPO, n).is_empty());

    // The 422 above was billed too: one request left of three.
    w.emu.set_rate_limit(3);
    assert_eq!(w.emu.rate_limit_remaining(&w.dev), 2);
    assert_eq!(get(&dev, &issue_path(n)).await.status, StatusCode::OK);
    assert_eq!(get(&dev, &issue_path(n)).await.status, StatusCode::OK);
    let r = get(&dev, &issue_path(n)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_same_keys("rate limit", &r.json(), &fixture("error_rate_limit.json"));
    let message = r.json()["message"].as_str().unwrap().to_string();
    assert!(
        message.starts_with("API rate limit exceeded for user ID "),
        "{message}"
    );

    // Windows last an hour of the emulator's clock.
    let reset: i64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!(reset > w.emu.now().timestamp());
    w.emu.advance_clock(chrono::Duration::minutes(61));
    assert_eq!(get(&dev, &issue_path(n)).await.status, StatusCode::OK);

    let r = get(&dev, "/repos/octocat/hello-world/nothing-here").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["message"], "Not Found");
}

// ----- (c) behaviours -----

/// Follows `rel="next"`, turning the absolute link back into a path for the raw calls.
fn next_link(resp: &Resp, base: &str) -> Option<String> {
    let link = resp.header("link")?;
    link.split(',').find_map(|part| {
        let (url, rel) = part.split_once(';')?;
        (rel.trim() == "rel=\"next\"").then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .trim_start_matches(base)
                .to_string()
        })
    })
}

#[tokio::test]
async fn link_headers_walk_all_pages_of_250_comments() {
    let w = world();
    let n = w.emu.create_issue(REPO, "busy");
    let seeded: Vec<u64> = (0..250)
        .map(|i| w.emu.add_comment(REPO, n, "dev", &format!("comment {i}")))
        .collect();
    let crab = crab(&w.emu, &w.dev);
    let base = w.emu.url();

    let mut path = Some(format!("{}/comments?per_page=100", issue_path(n)));
    let mut ids = Vec::new();
    let mut pages = Vec::new();
    while let Some(p) = path {
        let r = get(&crab, &p).await;
        assert_eq!(r.status, StatusCode::OK);
        pages.push(r.header("link").unwrap_or_default().to_string());
        let items: Vec<Comment> = model("page", &r.json());
        ids.extend(items.iter().map(|c| c.id.0));
        path = next_link(&r, &base);
    }
    assert_eq!(ids, seeded, "every comment once, ascending id");
    assert_eq!(pages.len(), 3);
    assert!(
        pages[0].contains("per_page=100&page=2>; rel=\"next\""),
        "{}",
        pages[0]
    );
    assert!(pages[0].contains("page=3>; rel=\"last\""), "{}", pages[0]);
    assert!(
        pages[1].contains("rel=\"prev\"") && pages[1].contains("rel=\"first\""),
        "{}",
        pages[1]
    );
    assert!(!pages[2].contains("rel=\"next\""), "{}", pages[2]);
    assert!(
        pages[0].starts_with(&format!("<{base}/repos/")),
        "absolute links: {}",
        pages[0]
    );

    // Default page size is 30, `since` filters on updated_at and survives into the links.
    let r = get(&crab, &format!("{}/comments", issue_path(n))).await;
    assert_eq!(r.json().as_array().unwrap().len(), 30);
    let since = "2000-01-01T00:00:00Z";
    let r = get(
        &crab,
        &format!("{}/comments?since={since}&per_page=100", issue_path(n)),
    )
    .await;
    assert!(
        r.header("link")
            .unwrap()
            .contains(&format!("since={since}"))
    );
    let r = get(
        &crab,
        &format!("{}/comments?since=2999-01-01T00:00:00Z", issue_path(n)),
    )
    .await;
    assert!(r.json().as_array().unwrap().is_empty());
}

/// octocrab follows GitHub's absolute `Link` URLs itself (`all_pages`); it keeps sending the
/// token because the links point at the `base_uri` host.
#[tokio::test]
async fn octocrab_all_pages_follows_links_with_the_token() {
    let w = world();
    w.emu.create_repo("octocat/private", "octocat", false);
    w.emu
        .add_collaborator("octocat/private", "dev", Permission::Read);
    let n = w.emu.create_issue("octocat/private", "busy");
    for i in 0..5 {
        w.emu
            .add_comment("octocat/private", n, "dev", &format!("c{i}"));
    }
    let crab = crab(&w.emu, &w.dev);
    let first = crab
        .issues("octocat", "private")
        .list_comments(n)
        .per_page(2u8)
        .send()
        .await
        .unwrap();
    assert!(first.next.is_some());
    let all = crab.all_pages(first).await.unwrap();
    assert_eq!(all.len(), 5);
    let log = w.emu.requests();
    assert_eq!(log.len(), 3);
    assert!(
        log.iter()
            .all(|r| r.status == 200 && r.login.as_deref() == Some("dev"))
    );
    assert_eq!(log[2].query.as_deref(), Some("per_page=2&page=3"));
}

#[tokio::test]
async fn etag_304_does_not_spend_rate_limit() {
    let w = world();
    let n = w.emu.create_issue(REPO, "x");
    let crab = crab(&w.emu, &w.dev);
    let first = get(&crab, &issue_path(n)).await;
    let etag = first
        .header("etag")
        .expect("GETs carry an ETag")
        .to_string();
    assert!(etag.starts_with("W/\""), "{etag}");
    let remaining = first.header("x-ratelimit-remaining").unwrap().to_string();
    for name in [
        "date",
        "x-ratelimit-limit",
        "x-ratelimit-used",
        "x-ratelimit-reset",
        "x-github-request-id",
    ] {
        assert!(first.header(name).is_some(), "missing {name}");
    }
    assert_eq!(first.header("x-ratelimit-resource"), Some("core"));
    assert_eq!(
        first.header("content-type"),
        Some("application/json; charset=utf-8")
    );

    let mut headers = HeaderMap::new();
    headers.insert("if-none-match", HeaderValue::from_str(&etag).unwrap());
    let resp = crab
        ._get_with_headers(issue_path(n), Some(headers.clone()))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(
        resp.headers()["x-ratelimit-remaining"].to_str().unwrap(),
        remaining
    );
    assert!(crab.body_to_string(resp).await.unwrap().is_empty());

    // A change makes the old tag stale, and that request is billed again.
    w.emu.add_comment(REPO, n, "dev", "news");
    let resp = crab
        ._get_with_headers(issue_path(n), Some(headers))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let after: u32 = resp.headers()["x-ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(after + 1, remaining.parse::<u32>().unwrap());

    let statuses: Vec<u16> = w.emu.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 304, 200], "304s are logged too");
}

#[tokio::test]
async fn gone_moved_and_hidden_issues() {
    let w = world();
    w.emu.create_repo("octocat/elsewhere", "octocat", true);
    w.emu.create_repo("octocat/secret", "octocat", false);
    let deleted = w.emu.create_issue(REPO, "doomed");
    let moved = w.emu.create_issue(REPO, "moving");
    w.emu.add_comment(REPO, moved, "dev", "comes along");
    let new_number = w.emu.transfer_issue(REPO, moved, "octocat/elsewhere");
    w.emu.delete_issue(REPO, deleted);
    let secret = w.emu.create_issue("octocat/secret", "hidden");
    let crab = crab(&w.emu, &w.dev);

    let r = get(&crab, &issue_path(deleted)).await;
    assert_eq!(r.status, StatusCode::GONE);
    assert_eq!(r.json()["message"], "This issue was deleted");
    let r = get(&crab, &format!("{}/comments", issue_path(deleted))).await;
    assert_eq!(r.status, StatusCode::GONE);

    let r = get(&crab, &issue_path(moved)).await;
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    let new_url = format!(
        "{}/repos/octocat/elsewhere/issues/{new_number}",
        w.emu.url()
    );
    assert_eq!(r.header("location"), Some(new_url.as_str()));
    assert_eq!(r.json()["message"], "Moved Permanently");
    assert_eq!(r.json()["url"], new_url.as_str());
    let r = get(
        &crab,
        &format!("/repos/octocat/elsewhere/issues/{new_number}/comments"),
    )
    .await;
    assert_eq!(
        r.json().as_array().unwrap().len(),
        1,
        "comments move with the issue"
    );

    let r = get(&crab, &issue_path(999)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["message"], "Not Found");
    let r = get(&crab, &format!("/repos/octocat/secret/issues/{secret}")).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "private repos without access do not exist"
    );
    let r = get(&crab, "/repos/nobody/nothing/issues/1").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unassignable_logins_are_dropped_silently() {
    let w = world();
    let n = w.emu.create_issue(REPO, "x");
    let dev = crab(&w.emu, &w.dev);
    let r = call(
        &dev,
        "POST",
        &format!("{}/assignees", issue_path(n)),
        Some(json!({"assignees": ["github-actions[bot]", "dev", "outsider", "ghost"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let issue: Issue = model("assign response", &r.json());
    assert_eq!(
        issue
            .assignees
            .iter()
            .map(|a| a.login.as_str())
            .collect::<Vec<_>>(),
        ["dev"]
    );
    assert_eq!(w.emu.issue_view(REPO, n).assignees, ["dev"]);

    // The bot itself gets a 201 and nothing changes: it can never be assigned.
    let bot = crab(&w.emu, &w.bot);
    let r = call(
        &bot,
        "POST",
        &format!("{}/assignees", issue_path(n)),
        Some(json!({"assignees": ["github-actions[bot]"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(w.emu.issue_view(REPO, n).assignees, ["dev"]);
    assert_eq!(
        get(&bot, "/user").await.json()["message"],
        "Resource not accessible by integration"
    );

    // Without push access the whole request is ignored, still with a 201.
    let outsider = crab(&w.emu, &w.outsider);
    let r = call(
        &outsider,
        "POST",
        &format!("{}/assignees", issue_path(n)),
        Some(json!({"assignees": ["octocat"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(w.emu.issue_view(REPO, n).assignees, ["dev"]);

    assert_eq!(
        get(&dev, &format!("/repos/{REPO}/assignees/dev"))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        get(
            &dev,
            &format!("/repos/{REPO}/assignees/github-actions[bot]")
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );

    let r = call(
        &dev,
        "DELETE",
        &format!("{}/assignees", issue_path(n)),
        Some(json!({"assignees": ["dev"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(w.emu.issue_view(REPO, n).assignees.is_empty());
}

#[tokio::test]
async fn locked_issue_refuses_comments_from_non_collaborators() {
    let w = world();
    let n = w.emu.create_issue(REPO, "x");
    w.emu.lock_issue(REPO, n);
    let path = format!("{}/comments", issue_path(n));

    let r = call(
        &crab(&w.emu, &w.outsider),
        "POST",
        &path,
        Some(json!({"body": "let me in"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        r.json()["message"],
        "Unable to create comment because issue is locked."
    );

    let r = call(
        &crab(&w.emu, &w.dev),
        "POST",
        &path,
        Some(json!({"body": "collaborators may"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);

    // Closed issues still take comments, and anonymous writes need authentication.
    w.emu.unlock_issue(REPO, n);
    w.emu.close_issue(REPO, n);
    let r = call(
        &crab(&w.emu, &w.outsider),
        "POST",
        &path,
        Some(json!({"body": "late"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let anonymous = Octocrab::builder()
        .base_uri(w.emu.url())
        .unwrap()
        .build()
        .unwrap();
    let r = call(&anonymous, "POST", &path, Some(json!({"body": "who am I"}))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(w.emu.comments(REPO, n).len(), 2);
}

#[tokio::test]
async fn injected_faults_before_and_after_the_write() {
    let w = world();
    let n = w.emu.create_issue(REPO, "x");
    let crab = crab(&w.emu, &w.dev);
    let path = format!("{}/comments", issue_path(n));

    w.emu.inject(
        "post",
        "/comments",
        Fault::ErrorAfterWrite { status: 502 },
        1,
    );
    let r = call(&crab, "POST", &path, Some(json!({"body": "did it land?"}))).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.json()["message"], "Server Error");
    let comments = w.emu.comments(REPO, n);
    assert_eq!(
        comments.len(),
        1,
        "the write happened although the client saw a 502"
    );
    assert_eq!(comments[0].body, "did it land?");

    w.emu.inject(
        "POST",
        "/comments",
        Fault::ErrorBeforeWrite { status: 500 },
        1,
    );
    let r = call(&crab, "POST", &path, Some(json!({"body": "lost"}))).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(w.emu.comments(REPO, n).len(), 1);

    w.emu.inject(
        "POST",
        "/comments",
        Fault::SecondaryRateLimit {
            retry_after_secs: 7,
        },
        1,
    );
    let r = call(&crab, "POST", &path, Some(json!({"body": "too fast"}))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("secondary rate limit")
    );
    assert_eq!(w.emu.comments(REPO, n).len(), 1);

    // Faults are used up; the next request is normal and everything was logged.
    let r = call(&crab, "POST", &path, Some(json!({"body": "fine"}))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let statuses: Vec<u16> = w.emu.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [502, 500, 403, 201]);
    assert!(
        w.emu
            .requests()
            .iter()
            .all(|r| r.login.as_deref() == Some("dev"))
    );
}

#[tokio::test]
async fn read_lag_hides_fresh_writes_from_lists_only() {
    let w = world();
    let n = w.emu.create_issue(REPO, "x");
    let old = w.emu.add_comment(REPO, n, "dev", "v1");
    let crab = crab(&w.emu, &w.dev);
    let list_path = format!("{}/comments", issue_path(n));
    let listed = |v: Value| -> Vec<(u64, String)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["id"].as_u64().unwrap(),
                    c["body"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };

    w.emu
        .set_read_lag_range(Duration::from_secs(30), Duration::from_secs(30));
    let created = call(&crab, "POST", &list_path, Some(json!({"body": "fresh"})))
        .await
        .json();
    let fresh = created["id"].as_u64().unwrap();
    assert_eq!(
        listed(get(&crab, &list_path).await.json()),
        [(old, "v1".to_string())]
    );
    let repo_wide = get(&crab, &format!("/repos/{REPO}/issues/comments"))
        .await
        .json();
    assert_eq!(listed(repo_wide), [(old, "v1".to_string())]);
    let single = get(&crab, &format!("/repos/{REPO}/issues/comments/{fresh}")).await;
    assert_eq!(
        single.status,
        StatusCode::OK,
        "single-comment GETs are always current"
    );
    assert_eq!(
        w.emu.comments(REPO, n).len(),
        2,
        "the control API shows the truth"
    );

    // Edits and deletions also show the previous version for a while.
    let edited = call(
        &crab,
        "PATCH",
        &format!("/repos/{REPO}/issues/comments/{old}"),
        Some(json!({"body": "v2"})),
    )
    .await;
    assert_eq!(edited.json()["body"], "v2", "write responses are current");
    assert_eq!(
        listed(get(&crab, &list_path).await.json()),
        [(old, "v1".to_string())]
    );

    w.emu
        .set_read_lag_range(Duration::from_millis(200), Duration::from_millis(200));
    let r = call(
        &crab,
        "DELETE",
        &format!("/repos/{REPO}/issues/comments/{old}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        get(&crab, &format!("/repos/{REPO}/issues/comments/{old}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        listed(get(&crab, &list_path).await.json()),
        [(old, "v1".to_string())]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        listed(get(&crab, &list_path).await.json()).is_empty(),
        "fresh is still 30 s away"
    );
}

#[tokio::test]
async fn clock_offset_drives_dates_and_timestamps() {
    let w = world();
    let n = w.emu.create_issue(REPO, "x");
    w.emu.set_clock_offset(chrono::Duration::days(-2));
    let crab = crab(&w.emu, &w.dev);
    let created = call(
        &crab,
        "POST",
        &format!("{}/comments", issue_path(n)),
        Some(json!({"body": "hi"})),
    )
    .await;
    let date = chrono::DateTime::parse_from_rfc2822(created.header("date").unwrap()).unwrap();
    let skew = chrono::Utc::now().signed_duration_since(date);
    assert!(
        (skew - chrono::Duration::days(2)).num_seconds().abs() < 5,
        "Date header follows the clock"
    );
    let comment: Comment = model("comment", &created.json());
    assert_eq!(comment.created_at, w.emu.comments(REPO, n)[0].created_at);
    assert!(
        created.json()["created_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert!((w.emu.now() - comment.created_at).num_seconds().abs() < 5);
    assert_eq!(
        w.emu.issue_view(REPO, n).updated_at,
        comment.created_at,
        "writes bump updated_at"
    );
}

#[tokio::test]
async fn concurrent_clients_get_ids_in_creation_order() {
    let w = world();
    let n = w.emu.create_issue(REPO, "contended");
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let crab = crab(&w.emu, if worker % 2 == 0 { &w.dev } else { &w.owner });
        let path = format!("{}/comments", issue_path(n));
        tasks.push(tokio::spawn(async move {
            for i in 0..5 {
                let r = call(
                    &crab,
                    "POST",
                    &path,
                    Some(json!({"body": format!("w{worker} #{i}")})),
                )
                .await;
                assert_eq!(r.status, StatusCode::CREATED);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let comments = w.emu.comments(REPO, n);
    assert_eq!(comments.len(), 80);
    assert!(
        comments
            .windows(2)
            .all(|p| p[0].id < p[1].id && p[0].created_at <= p[1].created_at)
    );
    let logged: Vec<_> = w
        .emu
        .requests()
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(logged.len(), 80);
}

/// Plain `#[test]`s start the emulator too (they then run the real binary against it).
#[test]
fn works_from_a_sync_test_and_stops_on_drop() {
    let w = world();
    let addr = w.emu.url().trim_start_matches("http://").to_string();
    let token = w.owner.clone();
    let response = get_user(&addr, &token).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"login\":\"octocat\""));
    drop(w);
    // Another test's server may be given the freed port at once; what must be gone is this
    // emulator, the only one that knows its random token.
    if let Ok(response) = get_user(&addr, &token) {
        assert!(
            !response.starts_with("HTTP/1.1 200"),
            "the server is gone after drop: {response}"
        );
    }
}

/// `GET /user` with `token`, on a connection of its own: the whole answer.
fn get_user(addr: &str, token: &str) -> std::io::Result<String> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    write!(
        stream,
        "GET /user HTTP/1.1\r\nHost: {addr}\r\nAuthorization: token {token}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

#[tokio::test]
async fn patch_replaces_fields_and_needs_push_access() {
    let w = world();
    let n = w.emu.create_issue(REPO, "before");
    w.emu.add_labels(REPO, n, &["old"]);
    let dev = crab(&w.emu, &w.dev);
    let r = call(
        &dev,
        "PATCH",
        &issue_path(n),
        Some(json!({"title": "after", "labels": ["lock:held"], "assignees": ["dev", "github-actions[bot]"], "state": "closed"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let issue: Issue = model("patched", &r.json());
    assert_eq!(issue.title, "after");
    assert_eq!(issue.state, octocrab::models::IssueState::Closed);
    assert!(issue.closed_at.is_some());
    assert_eq!(
        issue.closed_by.as_ref().map(|u| u.login.as_str()),
        Some("dev")
    );
    let view = w.emu.issue_view(REPO, n);
    assert_eq!(
        (view.labels, view.assignees),
        (vec!["lock:held".to_string()], vec!["dev".to_string()])
    );

    let r = call(
        &crab(&w.emu, &w.outsider),
        "PATCH",
        &issue_path(n),
        Some(json!({"title": "mine"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        r.json()["message"],
        "Resource not accessible by personal access token"
    );
    let r = call(
        &dev,
        "PATCH",
        &issue_path(n),
        Some(json!({"state": "sideways"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(w.emu.issue_view(REPO, n).title, "after");

    // Only the author or a pusher may edit or delete a comment.
    let mine = w.emu.add_comment(REPO, n, "outsider", "mine");
    let theirs = w.emu.add_comment(REPO, n, "dev", "theirs");
    let outsider = crab(&w.emu, &w.outsider);
    let comment = |id: u64| format!("/repos/{REPO}/issues/comments/{id}");
    let r = call(
        &outsider,
        "PATCH",
        &comment(theirs),
        Some(json!({"body": "hijack"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        call(&outsider, "DELETE", &comment(theirs), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(
            &outsider,
            "PATCH",
            &comment(mine),
            Some(json!({"body": "edited"}))
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        call(&dev, "DELETE", &comment(mine), None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&dev, "DELETE", &comment(mine), None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&dev, "PATCH", &comment(mine), Some(json!({"body": "x"})))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        w.emu
            .comments(REPO, n)
            .iter()
            .map(|c| c.id)
            .collect::<Vec<_>>(),
        [theirs]
    );
}

#[tokio::test]
async fn latency_and_repo_wide_comment_order() {
    let w = world();
    let a = w.emu.create_issue(REPO, "a");
    let b = w.emu.create_issue(REPO, "b");
    let first = w.emu.add_comment(REPO, a, "dev", "1");
    let second = w.emu.add_comment(REPO, b, "dev", "2");
    let crab = crab(&w.emu, &w.dev);

    let ids = |v: Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_u64().unwrap())
            .collect()
    };
    let all = get(&crab, &format!("/repos/{REPO}/issues/comments"))
        .await
        .json();
    assert_eq!(ids(all.clone()), [first, second]);
    assert_eq!(
        all[1]["issue_url"],
        format!("{}{}", w.emu.url(), issue_path(b))
    );
    let desc = get(
        &crab,
        &format!("/repos/{REPO}/issues/comments?sort=created&direction=desc"),
    )
    .await
    .json();
    assert_eq!(ids(desc), [second, first]);

    w.emu.set_latency(Duration::from_millis(150));
    let started = std::time::Instant::now();
    get(&crab, &issue_path(a)).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    w.emu.set_latency(Duration::ZERO);
    w.emu.inject(
        "GET",
        "/issues/",
        Fault::Latency(Duration::from_millis(200)),
        1,
    );
    let started = std::time::Instant::now();
    get(&crab, &issue_path(a)).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    let started = std::time::Instant::now();
    get(&crab, &issue_path(a)).await;
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "the latency fault was used up"
    );
}

/// The Actions jobs endpoints sentinel's job liveness reads: a job deserializes into octocrab's
/// model of GitHub's job, one attempt's jobs are listed page by page, and a token without
/// `actions: read` gets GitHub's 403.
#[tokio::test]
async fn emulated_workflow_jobs_match_githubs_job_model() {
    use octocrab::models::workflows::{Conclusion, Job, Status};
    let w = world();
    let build = w.emu.start_job(REPO, 777, 2, "build", "runner-1");
    let tests: Vec<u64> = (0..4)
        .map(|i| {
            w.emu.start_job(
                REPO,
                777,
                2,
                &format!("test ({i})"),
                &format!("runner-{i}x"),
            )
        })
        .collect();
    // Another attempt of the same run: never listed with attempt 2.
    w.emu.start_job(REPO, 777, 1, "build", "runner-9");
    w.emu.complete_job(build, "failure");
    let dev = crab(&w.emu, &w.dev);
    let base = w.emu.url();

    let mut path = Some(format!(
        "/repos/{REPO}/actions/runs/777/attempts/2/jobs?per_page=2"
    ));
    let mut listed = Vec::new();
    while let Some(p) = path {
        let r = get(&dev, &p).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json()["total_count"], 5);
        let page: Vec<Job> = model("jobs", &r.json()["jobs"]);
        assert!(page.len() <= 2);
        listed.extend(page);
        path = next_link(&r, &base);
    }
    let ids: Vec<u64> = listed.iter().map(|j| j.id.0).collect();
    assert_eq!(ids, [vec![build], tests.clone()].concat());
    let first = &listed[0];
    assert_eq!((first.run_id.0, first.run_attempt), (777, 2));
    assert_eq!(first.name, "build");
    assert_eq!(first.runner_name.as_deref(), Some("runner-1"));
    assert_eq!(first.status, Status::Completed);
    assert_eq!(first.conclusion, Some(Conclusion::Failure));
    assert!(first.completed_at.is_some());
    assert_eq!(listed[1].status, Status::InProgress);
    assert_eq!(listed[1].conclusion, None);

    let one = get(&dev, &format!("/repos/{REPO}/actions/jobs/{}", tests[0])).await;
    assert_eq!(one.status, StatusCode::OK);
    let job: Job = model("job", &one.json());
    assert_eq!(job.name, "test (0)");

    for missing in [
        format!("/repos/{REPO}/actions/runs/778/attempts/1/jobs"),
        format!("/repos/{REPO}/actions/runs/777/attempts/3/jobs"),
        format!("/repos/{REPO}/actions/jobs/1"),
    ] {
        assert_eq!(get(&dev, &missing).await.status, StatusCode::NOT_FOUND);
    }

    w.emu.deny_actions_read("github-actions[bot]");
    let bot = crab(&w.emu, &w.bot);
    let r = get(
        &bot,
        &format!("/repos/{REPO}/actions/runs/777/attempts/2/jobs"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        r.json()["message"],
        "Resource not accessible by integration"
    );
    // Others keep reading.
    let r = get(&dev, &format!("/repos/{REPO}/actions/jobs/{build}")).await;
    assert_eq!(r.status, StatusCode::OK);
}
