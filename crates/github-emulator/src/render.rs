//! GitHub-shaped JSON for users, labels, issues, comments, Actions jobs and errors. Field sets follow GitHub's
//! documented example responses (the same ones kept in `fixtures/`), because clients such as
//! octocrab refuse objects that lack a field they require. API URLs point at the emulator;
//! browser (`html_url`) URLs point at github.com like the real thing.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::actions::Job;
use crate::paginate::encode_component;
use crate::state::{Comment, Issue, Label, State, UserKind, Version};

/// GitHub's timestamp format: RFC 3339, whole seconds, `Z`.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The `Date` header format (RFC 7231 IMF-fixdate).
pub fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// GitHub's legacy global node ids are base64 of `"0<len>:<Type><id>"`, e.g. `MDQ6VXNlcjE=`.
pub fn node_id(type_name: &str, id: u64) -> String {
    base64(format!("0{}:{}{}", type_name.len(), type_name, id).as_bytes())
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An error body as GitHub sends it today (`status` is a string there, too).
pub fn error(status: u16, message: &str, documentation_url: &str) -> Value {
    json!({
        "message": message,
        "documentation_url": documentation_url,
        "status": status.to_string(),
    })
}

/// The "simple user" object embedded in issues and comments.
pub fn user(st: &State, user_key: &str) -> Value {
    let u = st.user(user_key);
    let api = format!("{}/users/{}", st.base_url, encode_component(&u.login));
    let (type_name, avatar, html) = match u.kind {
        UserKind::User => (
            "User",
            format!("https://avatars.githubusercontent.com/u/{}?v=4", u.id),
            format!("https://github.com/{}", u.login),
        ),
        UserKind::Bot => (
            "Bot",
            format!("https://avatars.githubusercontent.com/in/{}?v=4", u.id),
            format!(
                "https://github.com/apps/{}",
                u.login.trim_end_matches("[bot]")
            ),
        ),
    };
    json!({
        "login": u.login,
        "id": u.id,
        "node_id": node_id(if u.kind == UserKind::Bot { "Bot" } else { "User" }, u.id),
        "avatar_url": avatar,
        "gravatar_id": "",
        "url": api,
        "html_url": html,
        "followers_url": format!("{api}/followers"),
        "following_url": format!("{api}/following{{/other_user}}"),
        "gists_url": format!("{api}/gists{{/gist_id}}"),
        "starred_url": format!("{api}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{api}/subscriptions"),
        "organizations_url": format!("{api}/orgs"),
        "repos_url": format!("{api}/repos"),
        "events_url": format!("{api}/events{{/privacy}}"),
        "received_events_url": format!("{api}/received_events"),
        "type": type_name,
        "site_admin": false,
    })
}

/// `GET /user`: the simple user plus the private profile fields.
pub fn private_user(st: &State, user_key: &str) -> Value {
    let mut v = user(st, user_key);
    let u = st.user(user_key);
    let owned = st.repos.values().filter(|r| r.owner == user_key).count();
    let owned_private = st
        .repos
        .values()
        .filter(|r| r.owner == user_key && !r.public)
        .count();
    let extra = json!({
        "name": u.login,
        "company": null,
        "blog": "",
        "location": null,
        "email": null,
        "hireable": null,
        "bio": null,
        "twitter_username": null,
        "public_repos": owned - owned_private,
        "public_gists": 0,
        "followers": 0,
        "following": 0,
        "created_at": timestamp(u.created_at),
        "updated_at": timestamp(u.created_at),
        "private_gists": 0,
        "total_private_repos": owned_private,
        "owned_private_repos": owned_private,
        "disk_usage": 0,
        "collaborators": 0,
        "two_factor_authentication": true,
        "plan": { "name": "free", "space": 976_562_499, "collaborators": 0, "private_repos": 10_000 },
    });
    if let (Value::Object(base), Value::Object(extra)) = (&mut v, extra) {
        base.extend(extra);
    }
    v
}

pub fn label(st: &State, repo_key: &str, l: &Label) -> Value {
    let repo = st.repo(repo_key);
    json!({
        "id": l.id,
        "node_id": node_id("Label", l.id),
        "url": format!("{}/repos/{}/labels/{}", st.base_url, repo.full_name, encode_component(&l.name)),
        "name": l.name,
        "description": l.description,
        "color": l.color,
        "default": l.default,
    })
}

pub fn issue_labels(st: &State, repo_key: &str, issue: &Issue) -> Value {
    Value::Array(
        issue
            .labels
            .iter()
            .filter_map(|name| st.label(repo_key, name))
            .map(|l| label(st, repo_key, l))
            .collect(),
    )
}

pub fn issue(st: &State, repo_key: &str, issue: &Issue) -> Value {
    let repo = st.repo(repo_key);
    let api_repo = format!("{}/repos/{}", st.base_url, repo.full_name);
    let api = format!("{api_repo}/issues/{}", issue.number);
    let kind = if issue.is_pull_request {
        "pull"
    } else {
        "issues"
    };
    let html = format!(
        "https://github.com/{}/{kind}/{}",
        repo.full_name, issue.number
    );
    let assignees: Vec<Value> = issue.assignees.iter().map(|a| user(st, a)).collect();
    let comments = st.live_comments(repo_key, issue.number).len();
    let mut v = json!({
        "id": issue.id,
        "node_id": if issue.is_pull_request {
            node_id("PullRequest", issue.id)
        } else {
            node_id("Issue", issue.id)
        },
        "url": api,
        "repository_url": api_repo,
        "labels_url": format!("{api}/labels{{/name}}"),
        "comments_url": format!("{api}/comments"),
        "events_url": format!("{api}/events"),
        "html_url": html,
        "number": issue.number,
        "state": if issue.open { "open" } else { "closed" },
        "title": issue.title,
        "body": issue.body,
        "user": user(st, &issue.author),
        "pinned_comment": null,
        "labels": issue_labels(st, repo_key, issue),
        "assignee": assignees.first().cloned().unwrap_or(Value::Null),
        "assignees": assignees,
        "milestone": null,
        "locked": issue.locked,
        "active_lock_reason": null,
        "comments": comments,
        "closed_at": issue.closed_at.map(timestamp),
        "created_at": timestamp(issue.created_at),
        "updated_at": timestamp(issue.updated_at),
        "closed_by": issue.closed_by.as_deref().map(|u| user(st, u)),
        "author_association": st.author_association(repo_key, &issue.author),
        "state_reason": issue.state_reason,
    });
    if issue.is_pull_request {
        v["pull_request"] = json!({
            "url": format!("{api_repo}/pulls/{}", issue.number),
            "html_url": html,
            "diff_url": format!("{html}.diff"),
            "patch_url": format!("{html}.patch"),
        });
    }
    v
}

/// One comment in the state `version` describes. Single-comment responses carry `pin`; list
/// items do not, exactly like GitHub's examples.
pub fn comment(st: &State, c: &Comment, version: &Version, single: bool) -> Value {
    let repo = st.repo(&c.repo);
    let is_pr = st
        .issue(&c.repo, c.number)
        .is_some_and(|i| i.is_pull_request);
    let kind = if is_pr { "pull" } else { "issues" };
    let mut v = json!({
        "id": c.id,
        "node_id": node_id("IssueComment", c.id),
        "url": format!("{}/repos/{}/issues/comments/{}", st.base_url, repo.full_name, c.id),
        "html_url": format!("https://github.com/{}/{kind}/{}#issuecomment-{}", repo.full_name, c.number, c.id),
        "body": version.body,
        "user": user(st, &c.author),
        "created_at": timestamp(c.created_at),
        "updated_at": timestamp(version.updated_at),
        "issue_url": format!("{}/repos/{}/issues/{}", st.base_url, repo.full_name, c.number),
        "author_association": st.author_association(&c.repo, &c.author),
        "minimized": null,
    });
    if single {
        v["pin"] = Value::Null;
    }
    v
}

/// A job object with every field of GitHub's.
pub fn job(st: &State, j: &Job) -> Value {
    let full = &st.repo(&j.repo).full_name;
    let api = format!("{}/repos/{full}", st.base_url);
    json!({
        "id": j.id,
        "run_id": j.run_id,
        "run_url": format!("{api}/actions/runs/{}", j.run_id),
        "run_attempt": j.run_attempt,
        "node_id": node_id("CheckRun", j.id),
        "head_sha": format!("{:040x}", j.run_id),
        "url": format!("{api}/actions/jobs/{}", j.id),
        "html_url": format!("https://github.com/{full}/actions/runs/{}/job/{}", j.run_id, j.id),
        "status": j.status.as_str(),
        "conclusion": j.conclusion,
        "created_at": timestamp(j.created_at),
        "started_at": timestamp(j.started_at),
        "completed_at": j.completed_at.map(timestamp),
        "name": j.name,
        "steps": [],
        "check_run_url": format!("{api}/check-runs/{}", j.id),
        "labels": ["ubuntu-latest"],
        "runner_id": j.runner_name.as_ref().map(|_| 1),
        "runner_name": j.runner_name,
        "runner_group_id": j.runner_name.as_ref().map(|_| 1),
        "runner_group_name": j.runner_name.as_ref().map(|_| "GitHub Actions"),
        "workflow_name": "CI",
        "head_branch": "main",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_match_githubs_legacy_encoding() {
        assert_eq!(node_id("User", 1), "MDQ6VXNlcjE=");
        assert_eq!(node_id("Issue", 1), "MDU6SXNzdWUx");
        assert_eq!(node_id("IssueComment", 1), "MDEyOklzc3VlQ29tbWVudDE=");
        assert_eq!(node_id("Label", 208045946), "MDU6TGFiZWwyMDgwNDU5NDY=");
    }

    #[test]
    fn dates_use_githubs_formats() {
        let t = DateTime::parse_from_rfc3339("2011-04-14T16:00:49Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(timestamp(t), "2011-04-14T16:00:49Z");
        assert_eq!(http_date(t), "Thu, 14 Apr 2011 16:00:49 GMT");
    }
}
