//! Watching the local backend's locks: the table's numbered events
//! ([`sentinel_core::table::HISTORY`] of them kept in the table), read every [`POLL`].
//!
//! Polls only read the table, so a watch never holds up a claim; once a second the watch marks
//! the table watched for [`WATCHED`] more, since the table keeps events only while someone
//! watches. The stream resumes after the last revision it gave, so a process that restarts its
//! watch with that revision sees every later event once, unless more than the kept history
//! passed meanwhile, or a time nobody watched: then [`WatchItem::Compacted`] comes first.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::Stream;
use futures_util::stream;
use tokio::time::Instant;

use sentinel_core::error::Result;
use sentinel_core::lease;
use sentinel_core::lock::validate_name;
use sentinel_core::watch::{Compacted, WatchFilter, WatchItem};

use super::LocalBackend;

/// How often the table is read.
pub const POLL: Duration = Duration::from_millis(100);
/// How long one mark keeps the table watched; renewed every [`MARK_EVERY`].
pub const WATCHED: Duration = Duration::from_secs(5);
const MARK_EVERY: Duration = Duration::from_secs(1);

/// A stream's state between two items.
struct Watching {
    backend: LocalBackend,
    filter: WatchFilter,
    /// The last revision given; `None` until the table was first read.
    last: Option<u64>,
    ready: VecDeque<WatchItem>,
    /// When the table was last marked watched.
    marked: Option<Instant>,
}

impl LocalBackend {
    /// The events of the locks `filter` names after revision `since` (from now for `None`), for
    /// as long as the stream is polled.
    pub fn watch(
        &self,
        filter: WatchFilter,
        since: Option<u64>,
    ) -> Result<impl Stream<Item = Result<WatchItem>> + use<>> {
        if let WatchFilter::Name(n) = &filter {
            validate_name(n)?;
        }
        let start = Watching {
            backend: self.clone(),
            filter,
            last: since,
            ready: VecDeque::new(),
            marked: None,
        };
        Ok(stream::unfold(start, |mut w| async move {
            let item = w.next().await;
            Some((item, w))
        }))
    }
}

impl Watching {
    async fn next(&mut self) -> Result<WatchItem> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Ok(item);
            }
            if self.marked.is_none_or(|at| at.elapsed() >= MARK_EVERY) {
                let watched = lease::millis(WATCHED);
                self.backend
                    .blocking(move |b| {
                        b.transact(|t, now| t.watched_until(now.saturating_add(watched)))
                    })
                    .await?;
                self.marked = Some(Instant::now());
            }
            let (filter, last) = (self.filter.clone(), self.last);
            let (since, found) = self
                .backend
                .blocking(move |b| {
                    let table = b.store.read()?;
                    let since = last.unwrap_or(table.revision());
                    Ok((
                        since,
                        table.events_since(since, |e| filter.matches(e.subject())),
                    ))
                })
                .await?;
            match found {
                Ok(events) => {
                    self.last = Some(events.last().map_or(since, |e| e.revision));
                    self.ready.extend(events.into_iter().map(WatchItem::Event));
                }
                Err(gone) => {
                    self.last = Some(gone);
                    self.ready
                        .push_back(WatchItem::Compacted(Compacted::up_to(gone)));
                }
            }
            if self.ready.is_empty() {
                tokio::time::sleep(POLL).await;
            }
        }
    }
}
