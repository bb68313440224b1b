//! Who may do what on a node: the client tokens it accepts, each with a name (what the audit log
//! records, never the token) and the lock-name prefixes it may act on.
//!
//! The tokens come from `serve --acl FILE` and `--auth-token`. The file is one JSON object:
//!
//! ```json
//! {"tokens": [
//!   {"name": "ci", "token": "…", "prefixes": ["ci/"]},
//!   {"name": "ops", "sha256": "64 hex digits", "prefixes": [""]},
//!   {"name": "prometheus", "sha256": "…", "prefixes": []}
//! ]}
//! ```
//!
//! A token may act on a lock whose name starts with one of its prefixes: `""` starts every name,
//! so it makes an admin; `[]` acts on no lock (`/metrics` and `/cluster/status` only). An entry
//! gives its token, or the SHA-256 of it, so that the file need not hold the secret itself.
//! `--auth-token` beside `--acl` is one more admin token, named `default`.
//!
//! Kept here, apart from the HTTP API, so that the rules are parsed once at start (a bad file is
//! a usage error naming the entry, never echoing a token) and checked the same way everywhere.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use http::HeaderValue;
use serde_json::Value;
use sha2::{Digest, Sha256};

use sentinel_core::error::{Error, Result};
use sentinel_core::lock::{MAX_NAME_LEN, validate_label};
use sentinel_core::secret::Secret;

/// The name of the `--auth-token` admin token when an `--acl` file is given too.
pub const DEFAULT_NAME: &str = "default";
/// Largest ACL file read.
const MAX_FILE_BYTES: u64 = 1 << 20;
/// Longest token: what `--auth-token` takes.
const MAX_TOKEN_LEN: usize = 1024;
/// Most tokens, and most prefixes of one token: each request is checked against every token.
const MAX_TOKENS: usize = 1_000;
const MAX_PREFIXES: usize = 100;

/// One client token: its name, the digest it is known by, and where it may act.
pub struct Grantee {
    /// The name the audit log records.
    pub name: String,
    digest: [u8; 32],
    prefixes: Vec<String>,
}

impl Grantee {
    /// Whether this token may act on lock `name`.
    pub fn may(&self, name: &str) -> bool {
        self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }

    /// The locks it may act on, as a person reads them in an error message.
    pub fn scope(&self) -> String {
        if self.prefixes.is_empty() {
            return "no lock".to_string();
        }
        let shown: Vec<String> = self.prefixes.iter().map(|p| format!("{p:?}")).collect();
        format!("locks whose names start with {}", shown.join(" or "))
    }
}

/// The client tokens a node accepts.
#[derive(Clone)]
pub struct Acl {
    tokens: Vec<Arc<Grantee>>,
}

impl fmt::Debug for Acl {
    /// Names only: never a token or its digest.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.tokens.iter().map(|t| &t.name))
            .finish()
    }
}

impl Acl {
    /// The tokens of `serve`: the `--acl` file's, and `--auth-token` as an admin (named
    /// [`DEFAULT_NAME`]); `None` when neither is given (the node takes any client).
    ///
    /// # Errors
    ///
    /// A usage error naming the file and the entry for a file that cannot be read or does not
    /// follow the format; none repeats a token.
    pub fn from_options(auth_token: Option<&Secret>, file: Option<&Path>) -> Result<Option<Acl>> {
        let mut acl = match file {
            Some(path) => Acl::load(path)?,
            None => Acl { tokens: Vec::new() },
        };
        if let Some(token) = auth_token {
            let what = "--auth-token (SENTINEL_AUTH_TOKEN, --auth-token-file)";
            let admin = Grantee {
                name: DEFAULT_NAME.to_string(),
                digest: digest_of(what, token.expose()).map_err(Error::usage)?,
                prefixes: vec![String::new()],
            };
            acl.add(admin).map_err(|why| match file {
                Some(path) => Error::usage(format!("{what} with --acl {}: {why}", path.display())),
                None => Error::usage(format!("invalid {what}: {why}")),
            })?;
        }
        Ok((!acl.tokens.is_empty() || file.is_some()).then_some(acl))
    }

    /// Reads and checks an ACL file.
    fn load(path: &Path) -> Result<Acl> {
        let bad = |why: String| Error::usage(format!("invalid --acl {}: {why}", path.display()));
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
            .map_err(|e| bad(format!("cannot read it: {e}")))?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(bad(format!("it is larger than {MAX_FILE_BYTES} bytes")));
        }
        Acl::parse(&text).map_err(bad)
    }

    /// Parses the file's text. The JSON is walked by hand rather than by serde's derive, whose
    /// messages can quote a value, and a value here may be a token.
    pub fn parse(text: &str) -> std::result::Result<Acl, String> {
        // serde_json's syntax errors name a line and column, never the text.
        let root: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(root) = root else {
            return Err(r#"expected a JSON object {"tokens": [...]}"#.into());
        };
        if let Some(other) = root.keys().find(|k| *k != "tokens") {
            return Err(format!("unknown field {other:?}; expected only \"tokens\""));
        }
        let Some(Value::Array(entries)) = root.get("tokens") else {
            return Err(
                r#"expected "tokens": a list of {"name", "token" or "sha256", "prefixes"}"#.into(),
            );
        };
        if entries.len() > MAX_TOKENS {
            return Err(format!("at most {MAX_TOKENS} tokens"));
        }
        let mut acl = Acl { tokens: Vec::new() };
        for (i, entry) in entries.iter().enumerate() {
            let at = |name: Option<&str>, why: String| match name {
                Some(name) => format!("token entry {} ({name:?}): {why}", i + 1),
                None => format!("token entry {}: {why}", i + 1),
            };
            let grantee = entry_of(entry).map_err(|(name, why)| at(name.as_deref(), why))?;
            let name = grantee.name.clone();
            acl.add(grantee).map_err(|why| at(Some(&name), why))?;
        }
        Ok(acl)
    }

    /// Adds a token; an error when its name or the token is already there.
    fn add(&mut self, grantee: Grantee) -> std::result::Result<(), String> {
        if self.tokens.iter().any(|t| t.name == grantee.name) {
            return Err(format!("the name {:?} is given twice", grantee.name));
        }
        if let Some(other) = self.tokens.iter().find(|t| t.digest == grantee.digest) {
            return Err(format!("the same token as {:?}", other.name));
        }
        self.tokens.push(Arc::new(grantee));
        Ok(())
    }

    /// Whether `token` is one of the client tokens (serve refuses a peer token that is).
    pub fn holds(&self, token: &Secret) -> bool {
        let given: [u8; 32] = Sha256::digest(token.expose().as_bytes()).into();
        self.tokens.iter().any(|t| t.digest == given)
    }

    /// The token an `Authorization: Bearer TOKEN` header carries, if it is one of these. The
    /// given token is hashed once and its digest compared with every token's, each comparison
    /// without stopping at the first difference, so the time taken says nothing about a token.
    pub fn check(&self, authorization: Option<&HeaderValue>) -> Option<Arc<Grantee>> {
        // The scheme is case-insensitive (RFC 9110, section 11.1): `bearer` is `Bearer`.
        let (scheme, given) = authorization
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.split_once(' '))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let given: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
        let mut found = None;
        for t in &self.tokens {
            if same(&given, &t.digest) {
                found = Some(t.clone());
            }
        }
        found
    }
}

/// Whether two digests are equal, compared without stopping at the first difference.
pub fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |diff, (x, y)| diff | (x ^ y))
        == 0
}

/// A token's digest, checked as `--auth-token` is: 1 to 1024 printable ASCII characters.
fn digest_of(what: &str, token: &str) -> std::result::Result<[u8; 32], String> {
    if token.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if token.len() > MAX_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{what}: use 1 to {MAX_TOKEN_LEN} printable ASCII characters without spaces"
        ));
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}

/// One entry of the file; an error says why, with the entry's name once it is known.
fn entry_of(entry: &Value) -> std::result::Result<Grantee, (Option<String>, String)> {
    let Value::Object(fields) = entry else {
        return Err((
            None,
            r#"expected an object {"name", "token" or "sha256", "prefixes"}"#.into(),
        ));
    };
    if let Some(other) = fields
        .keys()
        .find(|k| !["name", "token", "sha256", "prefixes"].contains(&k.as_str()))
    {
        return Err((None, format!("unknown field {other:?}")));
    }
    let name = match fields.get("name") {
        Some(Value::String(n)) => n.clone(),
        _ => return Err((None, "\"name\" must be a string".into())),
    };
    validate_label("token name", &name).map_err(|e| (None, e.to_string()))?;
    let fail = |why: String| (Some(name.clone()), why);
    let digest = match (fields.get("token"), fields.get("sha256")) {
        (Some(_), Some(_)) => {
            return Err(fail("give \"token\" or \"sha256\", not both".into()));
        }
        (Some(Value::String(token)), None) => digest_of("\"token\"", token).map_err(fail)?,
        (None, Some(Value::String(hex))) => {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hex.trim(), &mut digest).map_err(|_| {
                fail("\"sha256\" must be 64 hexadecimal digits (sha256sum of the token)".into())
            })?;
            digest
        }
        (Some(_), None) => return Err(fail("\"token\" must be a string".into())),
        (None, Some(_)) => return Err(fail("\"sha256\" must be a string".into())),
        (None, None) => return Err(fail("give \"token\" or \"sha256\"".into())),
    };
    let Some(Value::Array(list)) = fields.get("prefixes") else {
        return Err(fail(
            "\"prefixes\" must be a list of lock-name prefixes ([\"\"] for every lock)".into(),
        ));
    };
    if list.len() > MAX_PREFIXES {
        return Err(fail(format!("at most {MAX_PREFIXES} prefixes")));
    }
    let mut prefixes = Vec::with_capacity(list.len());
    for p in list {
        let Value::String(p) = p else {
            return Err(fail("each prefix must be a string".into()));
        };
        if p == "*" {
            return Err(fail(
                "the prefix \"*\" would match only names starting with '*': use \"\" for every lock"
                    .into(),
            ));
        }
        if p.chars().count() > MAX_NAME_LEN || p.chars().any(char::is_control) {
            return Err(fail(format!(
                "prefix {p:?}: at most {MAX_NAME_LEN} characters, no control characters"
            )));
        }
        prefixes.push(p.clone());
    }
    Ok(Grantee {
        name,
        digest,
        prefixes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn sha(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    #[test]
    fn only_the_exact_bearer_token_is_accepted() {
        let acl = Acl::from_options(Some(&Secret::new("s3cret")), None)
            .unwrap()
            .unwrap();
        for ok in ["Bearer s3cret", "bearer s3cret", "BEARER s3cret"] {
            assert_eq!(acl.check(Some(&h(ok))).unwrap().name, DEFAULT_NAME);
        }
        for wrong in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Basic s3cret",
            "s3cret",
            "Bearer ",
        ] {
            assert!(acl.check(Some(&h(wrong))).is_none(), "{wrong}");
        }
        assert!(acl.check(None).is_none());
        assert!(!format!("{acl:?}").contains("s3cret"));
    }

    #[test]
    fn tokens_act_under_their_prefixes_only() {
        let text = format!(
            r#"{{"tokens": [
                {{"name": "ci", "token": "c1-t0ken", "prefixes": ["ci/", "shared/"]}},
                {{"name": "ops", "sha256": "{}", "prefixes": [""]}},
                {{"name": "scraper", "sha256": "{}", "prefixes": []}}
            ]}}"#,
            sha("0ps-t0ken").to_uppercase(),
            sha("scr4pe")
        );
        let acl = Acl::parse(&text).unwrap();
        let ci = acl.check(Some(&h("Bearer c1-t0ken"))).unwrap();
        assert_eq!(ci.name, "ci");
        assert!(ci.may("ci/build") && ci.may("shared/x") && !ci.may("prod/x") && !ci.may("ci"));
        assert_eq!(
            ci.scope(),
            r#"locks whose names start with "ci/" or "shared/""#
        );
        let ops = acl.check(Some(&h("Bearer 0ps-t0ken"))).unwrap();
        assert!(ops.may("prod/x") && ops.may("anything"));
        let scraper = acl.check(Some(&h("Bearer scr4pe"))).unwrap();
        assert!(!scraper.may("ci/x"));
        assert!(
            acl.check(Some(&h(&format!("Bearer {}", sha("c1-t0ken")))))
                .is_none()
        );
        assert!(acl.holds(&Secret::new("0ps-t0ken")));
        assert!(!acl.holds(&Secret::new("other")));
    }

    #[test]
    fn bad_files_are_refused_naming_the_entry_and_never_the_token() {
        let entry = |fields: &str| {
            format!(
                r#"{{"tokens": [{{"name": "a", "token": "s3cret-a", "prefixes": [""]}}, {fields}]}}"#
            )
        };
        for (text, says) in [
            ("{".to_string(), "not JSON"),
            ("[]".to_string(), "a JSON object"),
            (r#"{"tokens": {}}"#.to_string(), "\"tokens\""),
            (
                r#"{"tokens": [], "extra": 1}"#.to_string(),
                "unknown field \"extra\"",
            ),
            (entry(r#""s3cret-x""#), "token entry 2: expected an object"),
            (
                entry(r#"{"name": "a", "token": "s3cret-b", "prefixes": []}"#),
                "entry 2 (\"a\"): the name \"a\" is given twice",
            ),
            (
                entry(r#"{"name": "b", "token": "s3cret-a", "prefixes": []}"#),
                "the same token as \"a\"",
            ),
            (
                entry(r#"{"name": "b", "token": "", "prefixes": []}"#),
                "is empty",
            ),
            (
                entry(r#"{"name": "b", "token": "s3cret b", "prefixes": []}"#),
                "printable ASCII",
            ),
            (
                entry(r#"{"name": "b", "token": "s3cret-b", "sha256": "00", "prefixes": []}"#),
                "not both",
            ),
            (
                entry(r#"{"name": "b", "sha256": "s3cret-zz", "prefixes": []}"#),
                "64 hexadecimal",
            ),
            (
                entry(r#"{"name": "b", "sha256": "abcd", "prefixes": []}"#),
                "64 hexadecimal",
            ),
            (
                entry(r#"{"name": "b", "token": 12345, "prefixes": []}"#),
                "must be a string",
            ),
            (
                entry(r#"{"name": "b", "prefixes": []}"#),
                "give \"token\" or \"sha256\"",
            ),
            (
                entry(r#"{"name": "b", "token": "s3cret-b"}"#),
                "\"prefixes\"",
            ),
            (
                entry(r#"{"name": "b", "token": "s3cret-b", "prefixes": "ci/"}"#),
                "\"prefixes\"",
            ),
            (
                entry(r#"{"name": "b", "token": "s3cret-b", "prefixes": ["*"]}"#),
                "use \"\" for every lock",
            ),
            (
                entry(r#"{"name": "", "token": "s3cret-b", "prefixes": []}"#),
                "token name",
            ),
            (
                entry(r#"{"name": "b", "token": "s3cret-b", "prefixes": [], "tokn": 1}"#),
                "unknown field \"tokn\"",
            ),
        ] {
            let e = Acl::parse(&text)
                .err()
                .unwrap_or_else(|| panic!("accepted {text}"));
            assert!(e.contains(says), "{text}: {e}");
            assert!(!e.contains("s3cret") && !e.contains("12345"), "{e}");
        }
    }

    #[test]
    fn the_auth_token_is_an_admin_named_default_beside_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("acl.json");
        std::fs::write(
            &file,
            r#"{"tokens": [{"name": "ci", "token": "c1", "prefixes": ["ci/"]}]}"#,
        )
        .unwrap();
        let acl = Acl::from_options(Some(&Secret::new("adm1n")), Some(&file))
            .unwrap()
            .unwrap();
        let admin = acl.check(Some(&h("Bearer adm1n"))).unwrap();
        assert!(admin.name == DEFAULT_NAME && admin.may("prod/x"));
        let e = Acl::from_options(Some(&Secret::new("c1")), Some(&file)).unwrap_err();
        assert!(e.to_string().contains("the same token as \"ci\""), "{e}");
        std::fs::write(
            &file,
            r#"{"tokens": [{"name": "default", "token": "c1", "prefixes": [""]}]}"#,
        )
        .unwrap();
        let e = Acl::from_options(Some(&Secret::new("adm1n")), Some(&file)).unwrap_err();
        assert!(e.to_string().contains("given twice"), "{e}");
        let e = Acl::from_options(None, Some(&dir.path().join("missing"))).unwrap_err();
        assert!(
            e.to_string().contains("missing") && e.to_string().contains("cannot read"),
            "{e}"
        );
        assert!(Acl::from_options(None, None).unwrap().is_none());
    }

    proptest! {
        #[test]
        fn arbitrary_json_never_panics(v in json_value()) {
            let _ = Acl::parse(&v.to_string());
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".*") {
            let _ = Acl::parse(&s);
        }
    }

    /// JSON values, with the file's own keys more likely than chance would make them.
    fn json_value() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("tokens".to_string()),
            Just("name".to_string()),
            Just("token".to_string()),
            Just("sha256".to_string()),
            Just("prefixes".to_string()),
            ".{0,8}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,70}".prop_map(Value::String),
            "[0-9a-f]{64}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
