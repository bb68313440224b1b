//! `sentinel doctor`'s look at GitHub: the token and its primary rate limit (`GET /rate_limit`,
//! which GitHub does not bill), and whether the repository's issues can be read. Writes nothing.

use serde::Deserialize;

use sentinel_core::diagnose::Check;
use sentinel_core::error::{Error, Result};

use crate::GithubBackend;

/// With less than the limit divided by this left, the rate limit is a warning: a claim costs 3
/// requests and each heartbeat 1 (ARCHITECTURE.md, "Request budgets").
const LOW_FRACTION: u64 = 10;

/// `GET /rate_limit`'s answer, the primary (`core`) limit only.
#[derive(Deserialize)]
struct RateLimit {
    resources: Resources,
}

#[derive(Deserialize)]
struct Resources {
    core: Rate,
}

#[derive(Deserialize)]
struct Rate {
    limit: u64,
    remaining: u64,
    /// When the window resets, in Unix seconds.
    reset: i64,
}

impl GithubBackend {
    /// `sentinel doctor`'s checks: the token is accepted and how much of its hourly budget is
    /// left, then the repository's issues are readable with it.
    pub async fn diagnose(&self) -> Vec<Check> {
        let rate = match self.rate_limit().await {
            Ok(rate) => rate,
            Err(e) => return vec![Check::fail("rate limit", e)],
        };
        let resets = chrono::DateTime::from_timestamp(rate.reset, 0)
            .map(|at| {
                let left = sentinel_core::lease::until(self.now(), at);
                format!(
                    ", resets in {}",
                    sentinel_core::duration::display(std::time::Duration::from_secs(
                        left.as_secs()
                    ))
                )
            })
            .unwrap_or_default();
        let detail = format!(
            "{} of {} requests left this hour{resets}",
            rate.remaining, rate.limit
        );
        let low = rate.remaining.saturating_mul(LOW_FRACTION) < rate.limit;
        let rate_check = match low {
            true => Check::warn("rate limit", format!("{detail}: claims will wait for it")),
            false => Check::ok("rate limit", detail),
        };
        let repo = self.issues_readable().await;
        vec![rate_check, Check::of("repository", repo)]
    }

    async fn rate_limit(&self) -> Result<Rate> {
        let resp = self.client.get("/rate_limit").await?;
        if !resp.status.is_success() {
            return Err(Error::Unexpected(format!(
                "GitHub answered {} to GET /rate_limit: {}",
                resp.status,
                resp.message()
            )));
        }
        Ok(resp.json::<RateLimit>()?.resources.core)
    }

    /// One issue of the repository listed: the repository exists and the token may see it.
    async fn issues_readable(&self) -> Result<String> {
        let path = format!(
            "/repos/{}/{}/issues?state=all&per_page=1",
            self.repo.owner, self.repo.name
        );
        let resp = self.client.get(&path).await?;
        if resp.status == http::StatusCode::FORBIDDEN {
            return Err(Error::Auth(format!(
                "GitHub refused to list the issues of {}: {}",
                self.repo,
                resp.message()
            )));
        }
        if !resp.status.is_success() {
            return Err(self.repo_error(&resp));
        }
        Ok(format!("the issues of {} are readable", self.repo))
    }
}
