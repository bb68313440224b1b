//! The REST endpoints sentinel uses, as plain functions over `&mut State`: each one checks
//! access the way GitHub does (404 for what you may not see, 401/403 for what you may not do,
//! silent drops where GitHub is silent), applies the change and renders the reply. Auth, rate
//! limits, ETags and faults happen around this in `server.rs`.

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::actions::Job;
use crate::paginate::{self, PageRequest, query_get};
use crate::render;
use crate::state::{Comment, Fate, MAX_COMMENT_CHARS, State, UserKind, Version, key};

/// One API request, already authenticated.
pub struct Ctx<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub raw_query: Option<&'a str>,
    pub query: Vec<(String, String)>,
    pub body: &'a [u8],
    /// User key of the caller; `None` for anonymous requests.
    pub caller: Option<String>,
}

/// What a handler answers; `server.rs` adds the common headers.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Option<Value>,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: Some(body),
            headers: Vec::new(),
        }
    }

    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            body: None,
            headers: Vec::new(),
        }
    }

    pub fn error(status: u16, message: &str, documentation_url: &str) -> Reply {
        Reply::json(status, render::error(status, message, documentation_url))
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// Errors travel as `Err(Reply)` so handlers can use `?`.
type Result<T = Reply> = std::result::Result<T, Reply>;

const DOCS: &str = "https://docs.github.com/rest";
const ISSUE_DOCS: &str = "https://docs.github.com/rest/issues/issues#get-an-issue";
const COMMENT_DOCS: &str = "https://docs.github.com/rest/issues/comments#create-an-issue-comment";
const LABEL_DOCS: &str = "https://docs.github.com/rest/issues/labels#remove-a-label-from-an-issue";
const USER_DOCS: &str = "https://docs.github.com/rest/users/users#get-the-authenticated-user";

fn not_found() -> Reply {
    Reply::error(404, "Not Found", DOCS)
}

pub fn dispatch(st: &mut State, cx: &Ctx) -> Reply {
    let segs: Vec<String> = cx
        .path
        .trim_matches('/')
        .split('/')
        .map(|s| paginate::decode_component(s, false))
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let result = match (cx.method, segs.as_slice()) {
        ("GET", ["user"]) => get_user(st, cx),
        (_, ["repos", owner, name, rest @ ..]) => {
            repo_routes(st, cx, &format!("{owner}/{name}"), rest)
        }
        _ => Err(not_found()),
    };
    result.unwrap_or_else(|reply| reply)
}

fn get_user(st: &State, cx: &Ctx) -> Result {
    let caller = cx
        .caller
        .as_deref()
        .ok_or_else(|| Reply::error(401, "Requires authentication", USER_DOCS))?;
    if st.user(caller).kind == UserKind::Bot {
        return Err(Reply::error(
            403,
            "Resource not accessible by integration",
            USER_DOCS,
        ));
    }
    Ok(Reply::json(200, render::private_user(st, caller)))
}

fn repo_routes(st: &mut State, cx: &Ctx, full_name: &str, rest: &[&str]) -> Result {
    let repo = key(full_name);
    if cx.method != "GET" && cx.caller.is_none() {
        return Err(Reply::error(401, "Requires authentication", DOCS));
    }
    // Private repositories you cannot see do not exist, as far as GitHub tells you.
    if !st.can_read(&repo, cx.caller.as_deref()) {
        return Err(not_found());
    }
    match (cx.method, rest) {
        (_, ["actions", tail @ ..]) => actions_routes(st, cx, &repo, tail),
        ("GET", ["issues"]) => list_issues(st, cx, &repo),
        ("GET", ["issues", "comments"]) => list_repo_comments(st, cx, &repo),
        (_, ["issues", "comments", id]) => comment_routes(st, cx, &repo, id),
        ("GET", ["assignees", login]) => {
            if st.is_assignable(&repo, &key(login)) {
                Ok(Reply::empty(204))
            } else {
                Err(not_found())
            }
        }
        (_, ["issues", number, tail @ ..]) => {
            let number: u64 = number.parse().map_err(|_| not_found())?;
            resolve_issue(st, cx, &repo, number, tail)?;
            issue_routes(st, cx, &repo, number, tail)
        }
        _ => Err(not_found()),
    }
}

/// `GET /repos/{o}/{r}/actions/...`, the repository already resolved and readable by the caller.
fn actions_routes(st: &State, cx: &Ctx, repo: &str, rest: &[&str]) -> Result {
    if cx.method != "GET" {
        return Err(not_found());
    }
    if cx
        .caller
        .as_deref()
        .is_some_and(|c| st.actions.denied.contains(c))
    {
        return Err(forbidden(st, cx));
    }
    match rest {
        ["runs", run_id, "attempts", attempt, "jobs"] => {
            let run_id: u64 = run_id.parse().map_err(|_| not_found())?;
            let attempt: u32 = attempt.parse().map_err(|_| not_found())?;
            list_attempt_jobs(st, cx, repo, run_id, attempt)
        }
        ["jobs", job_id] => {
            let id: u64 = job_id.parse().map_err(|_| not_found())?;
            let job = st
                .actions
                .jobs
                .get(&id)
                .filter(|j| j.repo == repo)
                .ok_or_else(not_found)?;
            Ok(Reply::json(200, render::job(st, job)))
        }
        _ => Err(not_found()),
    }
}

/// One attempt's jobs, oldest first, paginated like GitHub: `{"total_count", "jobs"}` with the
/// `Link` header of the whole listing. A run (or attempt) nobody started is 404, as on GitHub.
fn list_attempt_jobs(st: &State, cx: &Ctx, repo: &str, run_id: u64, attempt: u32) -> Result {
    let jobs: Vec<&Job> = st
        .actions
        .jobs
        .values()
        .filter(|j| j.repo == repo && j.run_id == run_id && j.run_attempt == attempt)
        .collect();
    if jobs.is_empty() {
        return Err(not_found());
    }
    let page = PageRequest::from_query(&cx.query);
    let body = json!({
        "total_count": jobs.len(),
        "jobs": page.slice(&jobs).iter().map(|j| render::job(st, j)).collect::<Vec<_>>(),
    });
    let mut reply = Reply::json(200, body);
    let here = format!("{}{}", st.base_url, cx.path);
    if let Some(link) = paginate::link_header(&here, &cx.query, page, jobs.len()) {
        reply = reply.with_header("link", link);
    }
    Ok(reply)
}

/// Deleted issues answer 410 and transferred ones 301 on every issue-scoped endpoint.
fn resolve_issue(st: &State, cx: &Ctx, repo: &str, number: u64, tail: &[&str]) -> Result<()> {
    let issue = st.issue(repo, number).ok_or_else(not_found)?;
    match &issue.fate {
        Fate::Live => Ok(()),
        Fate::Deleted => Err(Reply::error(410, "This issue was deleted", ISSUE_DOCS)),
        Fate::Transferred {
            repo: to,
            number: n,
        } => {
            let mut url = format!("{}/repos/{}/issues/{n}", st.base_url, st.repo(to).full_name);
            for seg in tail {
                url.push('/');
                url.push_str(&paginate::encode_component(seg));
            }
            if let Some(q) = cx.raw_query {
                url.push('?');
                url.push_str(q);
            }
            let body = json!({
                "message": "Moved Permanently",
                "url": url,
                "documentation_url": "https://docs.github.com/v3/#http-redirects",
            });
            Err(Reply::json(301, body).with_header("location", url))
        }
    }
}

fn issue_routes(st: &mut State, cx: &Ctx, repo: &str, number: u64, tail: &[&str]) -> Result {
    match (cx.method, tail) {
        ("GET", []) => Ok(issue_reply(st, repo, number, 200)),
        ("PATCH", []) => patch_issue(st, cx, repo, number),
        ("GET", ["comments"]) => list_issue_comments(st, cx, repo, number),
        ("POST", ["comments"]) => create_comment(st, cx, repo, number),
        ("POST", ["assignees"]) => change_assignees(st, cx, repo, number, true),
        ("DELETE", ["assignees"]) => change_assignees(st, cx, repo, number, false),
        ("GET", ["labels"]) => Ok(labels_reply(st, repo, number)),
        ("POST", ["labels"]) => set_labels(st, cx, repo, number, false),
        ("PUT", ["labels"]) => set_labels(st, cx, repo, number, true),
        ("DELETE", ["labels"]) => {
            require_push(st, cx, repo)?;
            st.seeded_issue_mut(repo, number).labels.clear();
            st.touch_issue(repo, number);
            Ok(Reply::empty(204))
        }
        ("DELETE", ["labels", name]) => remove_label(st, cx, repo, number, name),
        _ => Err(not_found()),
    }
}

fn issue_reply(st: &State, repo: &str, number: u64, status: u16) -> Reply {
    let issue = st.issue(repo, number).expect("resolved issue");
    Reply::json(status, render::issue(st, repo, issue))
}

fn labels_reply(st: &State, repo: &str, number: u64) -> Reply {
    let issue = st.issue(repo, number).expect("resolved issue");
    Reply::json(200, render::issue_labels(st, repo, issue))
}

// ----- access -----

fn forbidden(st: &State, cx: &Ctx) -> Reply {
    let integration = cx
        .caller
        .as_deref()
        .is_some_and(|u| st.user(u).kind == UserKind::Bot);
    let message = if integration {
        "Resource not accessible by integration"
    } else {
        "Resource not accessible by personal access token"
    };
    Reply::error(403, message, DOCS)
}

fn require_push(st: &State, cx: &Ctx, repo: &str) -> Result<()> {
    if st.can_push(repo, cx.caller.as_deref()) {
        Ok(())
    } else {
        Err(forbidden(st, cx))
    }
}

fn caller<'a>(cx: &'a Ctx) -> &'a str {
    cx.caller
        .as_deref()
        .expect("writes are authenticated before routing")
}

// ----- request bodies -----

fn json_body(cx: &Ctx) -> Result<Value> {
    if cx.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(cx.body).map_err(|_| Reply::error(400, "Problems parsing JSON", DOCS))
}

fn validation_failed(
    resource: &str,
    field: &str,
    code: &str,
    message: Option<&str>,
    docs: &str,
) -> Reply {
    let mut detail = json!({ "resource": resource, "code": code, "field": field });
    if let Some(m) = message {
        detail["message"] = m.into();
    }
    let mut body = render::error(422, "Validation Failed", docs);
    body["errors"] = json!([detail]);
    Reply::json(422, body)
}

fn comment_body(cx: &Ctx) -> Result<String> {
    let v = json_body(cx)?;
    let body = v.get("body").and_then(Value::as_str).unwrap_or("");
    if body.trim().is_empty() {
        return Err(validation_failed(
            "IssueComment",
            "data",
            "unprocessable",
            Some("Body cannot be blank"),
            COMMENT_DOCS,
        ));
    }
    if body.chars().count() > MAX_COMMENT_CHARS {
        return Err(validation_failed(
            "IssueComment",
            "data",
            "unprocessable",
            Some("Body is too long (maximum is 65536 characters)"),
            COMMENT_DOCS,
        ));
    }
    Ok(body.to_string())
}

/// Strings from `{"<field>": [..]}` or a bare array; label lists may also hold `{"name": ..}`.
fn string_list(v: &Value, field: &str) -> Vec<String> {
    let items = match v {
        Value::Array(items) => items.as_slice(),
        Value::Object(o) => o
            .get(field)
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice),
        _ => &[],
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("name").and_then(Value::as_str).map(str::to_string),
            _ => None,
        })
        .collect()
}

fn since(cx: &Ctx) -> Result<Option<DateTime<Utc>>> {
    let Some(raw) = query_get(&cx.query, "since").filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    // An unencoded `+00:00` arrives as a space; forgive it like GitHub's lenient parser does.
    DateTime::parse_from_rfc3339(raw)
        .or_else(|_| DateTime::parse_from_rfc3339(&raw.replace(' ', "+")))
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|_| {
            validation_failed(
                "Issue",
                "since",
                "invalid",
                Some("Invalid value for `since`"),
                DOCS,
            )
        })
}

// ----- listings -----

/// Slices `items` to the requested page and adds the `Link` header for the whole listing.
fn paged<T>(st: &State, cx: &Ctx, items: &[T], render_item: impl Fn(&T) -> Value) -> Reply {
    let page = PageRequest::from_query(&cx.query);
    let body = Value::Array(page.slice(items).iter().map(render_item).collect());
    let mut reply = Reply::json(200, body);
    let here = format!("{}{}", st.base_url, cx.path);
    if let Some(link) = paginate::link_header(&here, &cx.query, page, items.len()) {
        reply = reply.with_header("link", link);
    }
    reply
}

fn list_issues(st: &State, cx: &Ctx, repo: &str) -> Result {
    let state = query_get(&cx.query, "state").unwrap_or("open");
    if !matches!(state, "open" | "closed" | "all") {
        return Err(validation_failed("Issue", "state", "invalid", None, DOCS));
    }
    let wanted: Vec<&str> = query_get(&cx.query, "labels")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let assignee = query_get(&cx.query, "assignee");
    let since = since(cx)?;
    let mut issues: Vec<_> = st
        .repo(repo)
        .issues
        .values()
        .filter(|i| i.fate == Fate::Live)
        .filter(|i| state == "all" || (state == "open") == i.open)
        .filter(|i| {
            wanted
                .iter()
                .all(|w| i.labels.iter().any(|l| l.eq_ignore_ascii_case(w)))
        })
        .filter(|i| match assignee {
            None => true,
            Some("*") => !i.assignees.is_empty(),
            Some("none") => i.assignees.is_empty(),
            Some(login) => i.assignees.contains(&key(login)),
        })
        .filter(|i| since.is_none_or(|s| i.updated_at >= s))
        .collect();
    let descending = query_get(&cx.query, "direction") != Some("asc");
    match query_get(&cx.query, "sort").unwrap_or("created") {
        "updated" => issues.sort_by_key(|i| (i.updated_at, i.number)),
        "comments" => issues.sort_by_key(|i| (st.live_comments(repo, i.number).len(), i.number)),
        _ => issues.sort_by_key(|i| (i.created_at, i.number)),
    }
    if descending {
        issues.reverse();
    }
    Ok(paged(st, cx, &issues, |i| render::issue(st, repo, i)))
}

fn list_issue_comments(st: &State, cx: &Ctx, repo: &str, number: u64) -> Result {
    let since = since(cx)?;
    let now = Instant::now();
    let issue = st.issue(repo, number).expect("resolved issue");
    let visible: Vec<(&Comment, &Version)> = issue
        .comment_ids
        .iter()
        .filter_map(|id| st.comments.get(id))
        .filter_map(|c| c.visible(now).map(|v| (c, v)))
        .filter(|(_, v)| since.is_none_or(|s| v.updated_at >= s))
        .collect();
    Ok(paged(st, cx, &visible, |(c, v)| {
        render::comment(st, c, v, false)
    }))
}

fn list_repo_comments(st: &State, cx: &Ctx, repo: &str) -> Result {
    let since = since(cx)?;
    let now = Instant::now();
    let mut visible: Vec<(&Comment, &Version)> = st
        .comments
        .values()
        .filter(|c| c.repo == repo)
        .filter(|c| {
            st.issue(repo, c.number)
                .is_some_and(|i| i.fate == Fate::Live)
        })
        .filter_map(|c| c.visible(now).map(|v| (c, v)))
        .filter(|(_, v)| since.is_none_or(|s| v.updated_at >= s))
        .collect();
    // Ascending id unless a sort is asked for (GitHub ignores `direction` without `sort`).
    if let Some(sort) = query_get(&cx.query, "sort") {
        if sort == "updated" {
            visible.sort_by_key(|(c, v)| (v.updated_at, c.id));
        } else {
            visible.sort_by_key(|(c, _)| (c.created_at, c.id));
        }
        if query_get(&cx.query, "direction") == Some("desc") {
            visible.reverse();
        }
    }
    Ok(paged(st, cx, &visible, |(c, v)| {
        render::comment(st, c, v, false)
    }))
}

// ----- comments -----

fn create_comment(st: &mut State, cx: &Ctx, repo: &str, number: u64) -> Result {
    let who = caller(cx);
    let permission = st.permission(repo, Some(who));
    if st.user(who).kind == UserKind::Bot && permission.is_none() {
        return Err(forbidden(st, cx));
    }
    let body = comment_body(cx)?;
    if st.issue(repo, number).expect("resolved issue").locked && permission.is_none() {
        return Err(Reply::error(
            403,
            "Unable to create comment because issue is locked.",
            "https://docs.github.com/articles/locking-conversations/",
        ));
    }
    let id = st.add_comment(repo, number, who, &body, true);
    let c = &st.comments[&id];
    let rendered = render::comment(st, c, c.current(), true);
    let location = rendered["url"].as_str().unwrap_or_default().to_string();
    Ok(Reply::json(201, rendered).with_header("location", location))
}

fn comment_routes(st: &mut State, cx: &Ctx, repo: &str, id: &str) -> Result {
    let id: u64 = id.parse().map_err(|_| not_found())?;
    let comment = st
        .comments
        .get(&id)
        .filter(|c| c.repo == repo && !c.is_deleted())
        .filter(|c| {
            st.issue(repo, c.number)
                .is_some_and(|i| i.fate == Fate::Live)
        })
        .ok_or_else(not_found)?;
    let is_author = cx.caller.as_deref() == Some(comment.author.as_str());
    match cx.method {
        "GET" => {
            let c = &st.comments[&id];
            Ok(Reply::json(200, render::comment(st, c, c.current(), true)))
        }
        // octocrab's `update_comment` sends POST; GitHub accepts both.
        "PATCH" | "POST" => {
            let body = comment_body(cx)?;
            if !is_author {
                require_push(st, cx, repo)?;
            }
            st.write_comment(id, Some(&body), true);
            let c = &st.comments[&id];
            Ok(Reply::json(200, render::comment(st, c, c.current(), true)))
        }
        "DELETE" => {
            if !is_author {
                require_push(st, cx, repo)?;
            }
            st.write_comment(id, None, true);
            Ok(Reply::empty(204))
        }
        _ => Err(not_found()),
    }
}

// ----- issue fields -----

/// GitHub's assignee rules: only callers with push access change anything, only assignable
/// users stick, at most 10 in all, and everything else is dropped without a word.
fn change_assignees(st: &mut State, cx: &Ctx, repo: &str, number: u64, add: bool) -> Result {
    let requested = string_list(&json_body(cx)?, "assignees");
    if st.can_push(repo, cx.caller.as_deref()) {
        let assignable: Vec<String> = requested
            .iter()
            .map(|l| key(l))
            .filter(|k| !add || st.is_assignable(repo, k))
            .collect();
        let issue = st.seeded_issue_mut(repo, number);
        let before = issue.assignees.clone();
        for k in assignable {
            if !add {
                issue.assignees.retain(|a| *a != k);
            } else if !issue.assignees.contains(&k) && issue.assignees.len() < 10 {
                issue.assignees.push(k);
            }
        }
        if issue.assignees != before {
            st.touch_issue(repo, number);
        }
    }
    Ok(issue_reply(st, repo, number, if add { 201 } else { 200 }))
}

fn set_labels(st: &mut State, cx: &Ctx, repo: &str, number: u64, replace: bool) -> Result {
    require_push(st, cx, repo)?;
    let names = string_list(&json_body(cx)?, "labels");
    let names: Vec<String> = names.iter().map(|n| st.ensure_label(repo, n)).collect();
    let issue = st.seeded_issue_mut(repo, number);
    if replace {
        issue.labels.clear();
    }
    for name in names {
        if !issue.labels.iter().any(|l| l.eq_ignore_ascii_case(&name)) {
            issue.labels.push(name);
        }
    }
    st.touch_issue(repo, number);
    Ok(labels_reply(st, repo, number))
}

fn remove_label(st: &mut State, cx: &Ctx, repo: &str, number: u64, name: &str) -> Result {
    require_push(st, cx, repo)?;
    let issue = st.seeded_issue_mut(repo, number);
    let pos = issue
        .labels
        .iter()
        .position(|l| l.eq_ignore_ascii_case(name))
        .ok_or_else(|| Reply::error(404, "Label does not exist", LABEL_DOCS))?;
    issue.labels.remove(pos);
    st.touch_issue(repo, number);
    Ok(labels_reply(st, repo, number))
}

fn patch_issue(st: &mut State, cx: &Ctx, repo: &str, number: u64) -> Result {
    require_push(st, cx, repo)?;
    let v = json_body(cx)?;
    let Some(fields) = v.as_object() else {
        return Err(Reply::error(400, "Problems parsing JSON", DOCS));
    };
    let invalid = |field: &str| validation_failed("Issue", field, "invalid", None, ISSUE_DOCS);

    // Validate everything before changing anything, so a 422 leaves the issue untouched.
    let title = match fields.get("title") {
        None => None,
        Some(Value::String(t)) if !t.trim().is_empty() => Some(t.clone()),
        Some(_) => {
            return Err(validation_failed(
                "Issue",
                "title",
                "missing_field",
                None,
                ISSUE_DOCS,
            ));
        }
    };
    let body = match fields.get("body") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(b)) => Some(Some(b.clone())),
        Some(_) => return Err(invalid("body")),
    };
    let state = match fields.get("state") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "open" || s == "closed" => Some(s.clone()),
        Some(_) => return Err(invalid("state")),
    };
    let state_reason = match fields.get("state_reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(s))
            if matches!(
                s.as_str(),
                "completed" | "not_planned" | "reopened" | "duplicate"
            ) =>
        {
            Some(s.clone())
        }
        Some(_) => return Err(invalid("state_reason")),
    };
    let labels = fields.get("labels").map(|l| string_list(l, "labels"));
    let assignees = match (fields.get("assignees"), fields.get("assignee")) {
        (Some(a), _) => Some(string_list(a, "assignees")),
        (None, Some(Value::Null)) => Some(Vec::new()),
        (None, Some(Value::String(a))) => Some(vec![a.clone()]),
        (None, Some(_)) => return Err(invalid("assignee")),
        (None, None) => None,
    };

    let who = caller(cx).to_string();
    if let Some(state) = state {
        if state == "closed" {
            let reason = state_reason
                .clone()
                .unwrap_or_else(|| "completed".to_string());
            st.close_issue(repo, number, Some(who), &reason);
        } else {
            st.reopen_issue(repo, number);
        }
    } else if state_reason.is_some() && !st.issue(repo, number).expect("resolved issue").open {
        st.seeded_issue_mut(repo, number).state_reason = state_reason;
    }
    let labels = labels.map(|names| {
        names
            .iter()
            .map(|n| st.ensure_label(repo, n))
            .collect::<Vec<_>>()
    });
    let assignees = assignees.map(|logins| {
        let mut keep: Vec<String> = Vec::new();
        for k in logins.iter().map(|l| key(l)) {
            if st.is_assignable(repo, &k) && !keep.contains(&k) && keep.len() < 10 {
                keep.push(k);
            }
        }
        keep
    });
    let issue = st.seeded_issue_mut(repo, number);
    if let Some(title) = title {
        issue.title = title;
    }
    if let Some(body) = body {
        issue.body = body;
    }
    if let Some(labels) = labels {
        issue.labels = labels;
    }
    if let Some(assignees) = assignees {
        issue.assignees = assignees;
    }
    st.touch_issue(repo, number);
    Ok(issue_reply(st, repo, number, 200))
}
