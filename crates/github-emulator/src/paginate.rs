//! Query strings and GitHub-style pagination: `per_page`/`page` parsing, slicing, and the `Link`
//! header. Pure functions, so the awkward edge cases (last page, page past the end, other query
//! parameters that must survive into the links) are unit-tested without a server.

/// GitHub's default and maximum `per_page`.
pub const DEFAULT_PER_PAGE: usize = 30;
pub const MAX_PER_PAGE: usize = 100;

/// Splits a raw query string into decoded `(key, value)` pairs, keeping their order.
pub fn parse_query(raw: Option<&str>) -> Vec<(String, String)> {
    let Some(raw) = raw else { return Vec::new() };
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_component(k, true), decode_component(v, true))
        })
        .collect()
}

/// Percent-decodes one URL component. In query strings `+` means a space; in paths it does not.
pub fn decode_component(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a query value so that links we build can be parsed back.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b',' | b':' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Returns the last value given for `key` (GitHub, like most Rails apps, lets the last one win).
pub fn query_get<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The page the client asked for, normalised the way GitHub does it: a missing or nonsensical
/// `per_page` becomes 30, anything above 100 becomes 100; pages count from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub page: usize,
    pub per_page: usize,
}

impl PageRequest {
    pub fn from_query(query: &[(String, String)]) -> PageRequest {
        let per_page =
            match query_get(query, "per_page").and_then(|v| v.trim().parse::<usize>().ok()) {
                Some(0) | None => DEFAULT_PER_PAGE,
                Some(n) => n.min(MAX_PER_PAGE),
            };
        let page = query_get(query, "page")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|p| *p >= 1)
            .unwrap_or(1);
        PageRequest { page, per_page }
    }

    /// Number of the last page for `total` items (at least 1, as GitHub reports an empty list
    /// as a single empty page).
    pub fn last_page(&self, total: usize) -> usize {
        total.div_ceil(self.per_page).max(1)
    }

    /// The slice of `items` this page covers (empty past the end).
    pub fn slice<'a, T>(&self, items: &'a [T]) -> &'a [T] {
        let start = (self.page - 1)
            .saturating_mul(self.per_page)
            .min(items.len());
        let end = start.saturating_add(self.per_page).min(items.len());
        &items[start..end]
    }
}

/// Builds GitHub's `Link` header for a listing of `total` items, or `None` when everything fits
/// on one page and the client is on it. `base_and_path` is the absolute URL without query;
/// `query` is the request's query, whose other parameters are preserved in every link.
///
/// GitHub orders the relations prev, next, last, first and omits the ones that do not apply:
/// no prev/first on page 1, no next/last on the last page.
pub fn link_header(
    base_and_path: &str,
    query: &[(String, String)],
    req: PageRequest,
    total: usize,
) -> Option<String> {
    let last = req.last_page(total);
    if last == 1 && req.page == 1 {
        return None;
    }
    let url = |page: usize| -> String {
        let mut parts: Vec<String> = query
            .iter()
            .filter(|(k, _)| k != "page")
            .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
            .collect();
        parts.push(format!("page={page}"));
        format!("{base_and_path}?{}", parts.join("&"))
    };
    let mut links = Vec::new();
    if req.page > 1 {
        links.push(format!("<{}>; rel=\"prev\"", url((req.page - 1).min(last))));
    }
    if req.page < last {
        links.push(format!("<{}>; rel=\"next\"", url(req.page + 1)));
        links.push(format!("<{}>; rel=\"last\"", url(last)));
    }
    if req.page > 1 {
        links.push(format!("<{}>; rel=\"first\"", url(1)));
    }
    Some(links.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(raw: &str) -> Vec<(String, String)> {
        parse_query(Some(raw))
    }

    #[test]
    fn per_page_defaults_and_caps_like_github() {
        assert_eq!(
            PageRequest::from_query(&q("")),
            PageRequest {
                page: 1,
                per_page: 30
            }
        );
        assert_eq!(
            PageRequest::from_query(&q("per_page=500&page=3")),
            PageRequest {
                page: 3,
                per_page: 100
            }
        );
        assert_eq!(
            PageRequest::from_query(&q("per_page=0&page=0")),
            PageRequest {
                page: 1,
                per_page: 30
            }
        );
        assert_eq!(
            PageRequest::from_query(&q("per_page=abc&page=-2")),
            PageRequest {
                page: 1,
                per_page: 30
            }
        );
    }

    #[test]
    fn slicing_covers_every_item_once() {
        let items: Vec<u32> = (0..250).collect();
        let mut seen = Vec::new();
        for page in 1..=3 {
            let req = PageRequest {
                page,
                per_page: 100,
            };
            seen.extend_from_slice(req.slice(&items));
        }
        assert_eq!(seen, items);
        assert!(
            PageRequest {
                page: 4,
                per_page: 100
            }
            .slice(&items)
            .is_empty()
        );
        assert_eq!(
            PageRequest {
                page: 1,
                per_page: 100
            }
            .last_page(250),
            3
        );
        assert_eq!(
            PageRequest {
                page: 1,
                per_page: 100
            }
            .last_page(0),
            1
        );
    }

    #[test]
    fn no_link_header_when_everything_fits() {
        let req = PageRequest {
            page: 1,
            per_page: 30,
        };
        assert_eq!(link_header("http://h/x", &[], req, 30), None);
        assert_eq!(link_header("http://h/x", &[], req, 0), None);
    }

    #[test]
    fn first_page_links_next_and_last_preserving_other_params() {
        let query = q("since=2024-01-01T00:00:00Z&per_page=100");
        let req = PageRequest::from_query(&query);
        let link = link_header("http://h/repos/o/r/issues/1/comments", &query, req, 250).unwrap();
        assert_eq!(
            link,
            "<http://h/repos/o/r/issues/1/comments?since=2024-01-01T00:00:00Z&per_page=100&page=2>; rel=\"next\", \
             <http://h/repos/o/r/issues/1/comments?since=2024-01-01T00:00:00Z&per_page=100&page=3>; rel=\"last\""
        );
    }

    #[test]
    fn middle_and_last_pages() {
        let query = q("per_page=10&page=2");
        let req = PageRequest::from_query(&query);
        let link = link_header("http://h/p", &query, req, 25).unwrap();
        assert_eq!(
            link,
            "<http://h/p?per_page=10&page=1>; rel=\"prev\", <http://h/p?per_page=10&page=3>; rel=\"next\", \
             <http://h/p?per_page=10&page=3>; rel=\"last\", <http://h/p?per_page=10&page=1>; rel=\"first\""
        );
        let query = q("page=3&per_page=10");
        let req = PageRequest::from_query(&query);
        let link = link_header("http://h/p", &query, req, 25).unwrap();
        assert_eq!(
            link,
            "<http://h/p?per_page=10&page=2>; rel=\"prev\", <http://h/p?per_page=10&page=1>; rel=\"first\""
        );
    }

    #[test]
    fn page_past_the_end_points_back_to_the_last_page() {
        let query = q("per_page=10&page=9");
        let req = PageRequest::from_query(&query);
        let link = link_header("http://h/p", &query, req, 25).unwrap();
        assert!(
            link.starts_with("<http://h/p?per_page=10&page=3>; rel=\"prev\""),
            "{link}"
        );
    }

    #[test]
    fn decoding_handles_percent_plus_and_garbage() {
        assert_eq!(decode_component("lock%3Aheld+x", true), "lock:held x");
        assert_eq!(decode_component("a+b", false), "a+b");
        assert_eq!(decode_component("100%", true), "100%");
        assert_eq!(decode_component("%zz", true), "%zz");
        assert_eq!(
            q("labels=a,b&state=all"),
            vec![
                ("labels".to_string(), "a,b".to_string()),
                ("state".to_string(), "all".to_string())
            ]
        );
        assert_eq!(
            decode_component(&encode_component("in progress/é"), false),
            "in progress/é"
        );
    }
}
