//! The key-value store's vocabulary, the same on every backend that keeps one: what a key and a
//! value may be, and how a merge write combines a new value with the stored one.
//!
//! Values are JSON. A merge write is decided where the writes are ordered (the coordinator's
//! state machine), so two workers that add to one counter, or put members into one set, never
//! lose each other's update and need no compare-and-set loop: `add`, `max`, `min` and `union`
//! commute (any order of the same writes gives the same value), `deep` and `replace` do not (the
//! later write wins where both set a field). [`merge`] is pure, so every node that applies the
//! same writes in the same order holds the same values.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use crate::error::{Error, Result};

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value, in bytes of its JSON.
pub const MAX_VALUE_BYTES: usize = 256 << 10;
/// The store's default size quota (keys and values' JSON, in bytes).
pub const DEFAULT_QUOTA: u64 = 1 << 30;
/// The largest quota: the store is held in memory and in every snapshot, which a peer accepts
/// up to 4 GiB with the locks beside it.
pub const MAX_QUOTA: u64 = 2 << 30;

/// How a write combines its value with the stored one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Merge {
    /// The new value replaces the stored one.
    #[default]
    Replace,
    /// Arrays as sets: the stored array gains the new one's elements it lacks, in their order.
    Union,
    /// Objects merged recursively: the new value's fields replace the stored ones', except
    /// where both are objects, which merge again.
    Deep,
    /// The larger of two numbers.
    Max,
    /// The smaller of two numbers.
    Min,
    /// The sum of two numbers: a counter.
    Add,
}

impl Merge {
    /// Its name in the API and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Merge::Replace => "replace",
            Merge::Union => "union",
            Merge::Deep => "deep",
            Merge::Max => "max",
            Merge::Min => "min",
            Merge::Add => "add",
        }
    }

    /// What the new value of such a write must be, checked before the write is ordered: `None`
    /// when `value` fits.
    pub fn refuses(self, value: &Value) -> Option<String> {
        let wants = match self {
            Merge::Replace => return None,
            Merge::Union if value.is_array() => return None,
            Merge::Deep if value.is_object() => return None,
            Merge::Max | Merge::Min | Merge::Add if value.is_number() => return None,
            Merge::Union => "an array",
            Merge::Deep => "an object",
            Merge::Max | Merge::Min | Merge::Add => "a number",
        };
        Some(format!(
            "a {} merge writes {wants}, not {}",
            self.name(),
            kind(value)
        ))
    }

    /// Whether the writes of this merge give the same value in any order.
    pub fn commutes(self) -> bool {
        matches!(self, Merge::Union | Merge::Max | Merge::Min | Merge::Add)
    }
}

/// One condition of a transaction: every one given must hold of `key` for its writes to
/// happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compare {
    /// The key it looks at.
    pub key: String,
    /// The key's `mod_revision` is this (0: it does not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// The key holds this value (a JSON `null` here means no condition on the value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// The key exists, or does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
}

impl Compare {
    /// Whether it holds of a key whose value and `mod_revision` are `found`.
    pub fn holds(&self, found: Option<(&Value, u64)>) -> bool {
        self.revision
            .is_none_or(|r| found.map_or(0, |(_, m)| m) == r)
            && self
                .value
                .as_ref()
                .is_none_or(|v| found.is_some_and(|(f, _)| f == v))
            && self.exists.is_none_or(|e| e == found.is_some())
    }
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// Write a key's value, or merge into it.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Value,
        /// How it combines with the stored one.
        #[serde(default, skip_serializing_if = "is_replace")]
        merge: Merge,
    },
    /// Delete a key (nothing, if it does not exist).
    Delete {
        /// The key.
        key: String,
    },
}

impl Op {
    /// The key it writes.
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

fn is_replace(m: &Merge) -> bool {
    *m == Merge::Replace
}

/// Most compares and writes one transaction holds together.
pub const MAX_TXN_OPS: usize = 1_000;

/// What a JSON value is, for messages.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The value a write leaves: `new` merged into `stored` (`None`: the key has no value yet, and
/// the write stores `new` as it is). `Err` names why the stored value cannot take the merge (a
/// counter that holds a string); [`Merge::refuses`] has checked `new` already.
pub fn merge(stored: Option<&Value>, new: Value, how: Merge) -> std::result::Result<Value, String> {
    let Some(stored) = stored else {
        return Ok(new);
    };
    let new_kind = kind(&new);
    let mismatch = || {
        Err(format!(
            "the key holds {}, which a {} merge cannot combine with {new_kind}",
            kind(stored),
            how.name(),
        ))
    };
    match how {
        Merge::Replace => Ok(new),
        Merge::Union => match (stored, new) {
            (Value::Array(old), Value::Array(more)) => {
                let mut all = old.clone();
                for v in more {
                    if !all.contains(&v) {
                        all.push(v);
                    }
                }
                Ok(Value::Array(all))
            }
            _ => mismatch(),
        },
        Merge::Deep => match (stored, new) {
            (Value::Object(old), Value::Object(more)) => Ok(Value::Object(deep(old.clone(), more))),
            _ => mismatch(),
        },
        Merge::Max | Merge::Min | Merge::Add => match (stored, &new) {
            (Value::Number(a), Value::Number(b)) => Ok(Value::Number(arithmetic(a, b, how))),
            _ => mismatch(),
        },
    }
}

fn deep(mut old: Map<String, Value>, more: Map<String, Value>) -> Map<String, Value> {
    for (k, v) in more {
        let merged = match (old.remove(&k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => Value::Object(deep(a, b)),
            (_, v) => v,
        };
        old.insert(k, merged);
    }
    old
}

/// Two numbers' max, min or sum: exact on integers (in `i128`, stored back as `i64` or `u64`; a
/// sum beyond both becomes a float, as JSON numbers here have no wider integer), in `f64`
/// otherwise. A float result that is not finite saturates at the largest float, so a stored
/// number is never NaN or infinite (JSON cannot hold them).
fn arithmetic(a: &Number, b: &Number, how: Merge) -> Number {
    let wide = |n: &Number| n.as_i64().map(i128::from).or(n.as_u64().map(i128::from));
    if let (Some(x), Some(y)) = (wide(a), wide(b)) {
        let r = match how {
            Merge::Max => x.max(y),
            Merge::Min => x.min(y),
            _ => x + y,
        };
        return if let Ok(v) = i64::try_from(r) {
            v.into()
        } else if let Ok(v) = u64::try_from(r) {
            v.into()
        } else {
            finite(r as f64)
        };
    }
    let (x, y) = (float(a), float(b));
    finite(match how {
        Merge::Max => x.max(y),
        Merge::Min => x.min(y),
        _ => x + y,
    })
}

fn float(n: &Number) -> f64 {
    n.as_f64().unwrap_or(0.0)
}

fn finite(x: f64) -> Number {
    let x = if x.is_nan() {
        0.0
    } else {
        x.clamp(f64::MIN, f64::MAX)
    };
    Number::from_f64(x).unwrap_or_else(|| 0.into())
}

/// The bytes of `value`'s JSON, counted without writing them anywhere (`u64::MAX` for a value
/// that cannot be written as JSON).
pub fn json_len<T: Serialize + ?Sized>(value: &T) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => u64::MAX,
    }
}

/// Refuses (exit 2) a key that is empty, longer than [`MAX_KEY_BYTES`] or holds a control
/// character (keys are shown in terminals and logs).
pub fn validate_key(key: &str) -> Result<()> {
    let bad = |why: String| Err(Error::usage(format!("invalid key {key:?}: {why}")));
    if key.is_empty() {
        return bad("it is empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return bad(format!(
            "it is {} bytes long; keys are at most {MAX_KEY_BYTES}",
            key.len()
        ));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return bad(format!("it contains the control character {c:?}"));
    }
    Ok(())
}

/// The bytes a value takes in the store (its JSON), refused (exit 2) beyond
/// [`MAX_VALUE_BYTES`].
pub fn value_bytes(value: &Value) -> Result<usize> {
    let bytes = usize::try_from(json_len(value)).unwrap_or(usize::MAX);
    if bytes > MAX_VALUE_BYTES {
        return Err(Error::usage(format!(
            "the value is {bytes} bytes of JSON; values are at most {MAX_VALUE_BYTES}"
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn each_merge_combines_as_its_name_says() {
        let m = |stored: Value, new: Value, how| merge(Some(&stored), new, how).unwrap();
        assert_eq!(m(json!(1), json!("x"), Merge::Replace), json!("x"));
        assert_eq!(
            m(json!([1, 2]), json!([2, 3, 3]), Merge::Union),
            json!([1, 2, 3])
        );
        assert_eq!(
            m(
                json!({"a": {"b": 1, "c": 2}, "d": 1}),
                json!({"a": {"b": 5}, "d": {"e": 1}}),
                Merge::Deep
            ),
            json!({"a": {"b": 5, "c": 2}, "d": {"e": 1}})
        );
        assert_eq!(m(json!(3), json!(5), Merge::Max), json!(5));
        assert_eq!(m(json!(3), json!(-5), Merge::Min), json!(-5));
        assert_eq!(m(json!(3), json!(4), Merge::Add), json!(7));
        assert_eq!(m(json!(1.5), json!(1), Merge::Add), json!(2.5));
        assert_eq!(
            m(json!(i64::MAX), json!(1), Merge::Add),
            json!(i64::MAX as u64 + 1)
        );
        assert_eq!(
            m(json!(-1), json!(u64::MAX), Merge::Add),
            json!(u64::MAX - 1)
        );
        assert_eq!(
            m(json!(f64::MAX), json!(f64::MAX), Merge::Add),
            json!(f64::MAX)
        );
        assert_eq!(merge(None, json!(4), Merge::Add).unwrap(), json!(4));
    }

    #[test]
    fn a_merge_that_does_not_fit_is_refused_with_both_kinds() {
        assert_eq!(
            Merge::Add.refuses(&json!("1")).unwrap(),
            "a add merge writes a number, not a string"
        );
        assert!(Merge::Replace.refuses(&json!(null)).is_none());
        let e = merge(Some(&json!("x")), json!(1), Merge::Add).unwrap_err();
        assert!(
            e.contains("holds a string") && e.contains("a number"),
            "{e}"
        );
    }

    #[test]
    fn keys_and_values_have_limits() {
        assert!(validate_key("jobs/42/progress").is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert!(validate_key(&"k".repeat(MAX_KEY_BYTES + 1)).is_err());
        assert!(validate_key("a\nb").is_err());
        assert_eq!(value_bytes(&json!("ab")).unwrap(), 4);
        assert!(value_bytes(&json!("x".repeat(MAX_VALUE_BYTES))).is_err());
    }

    fn integers() -> impl Strategy<Value = Vec<i64>> {
        prop::collection::vec(-1_000_000i64..1_000_000, 1..20)
    }

    proptest! {
        /// The merges that say they commute give one value for any order of the same writes.
        #[test]
        fn commuting_merges_do_not_depend_on_order(xs in integers(), seed in any::<u64>()) {
            let mut shuffled = xs.clone();
            fastrand::Rng::with_seed(seed).shuffle(&mut shuffled);
            for how in [Merge::Union, Merge::Max, Merge::Min, Merge::Add] {
                prop_assert!(how.commutes());
                let apply = |order: &[i64]| {
                    order.iter().fold(None, |stored: Option<Value>, x| {
                        let new = match how {
                            Merge::Union => json!([x % 7]),
                            _ => json!(x),
                        };
                        Some(merge(stored.as_ref(), new, how).unwrap())
                    })
                };
                let (a, b) = (apply(&xs), apply(&shuffled));
                match how {
                    // A set: the same members, in the order they first came.
                    Merge::Union => {
                        let set = |v: Option<Value>| {
                            let mut m: Vec<i64> = v.unwrap().as_array().unwrap()
                                .iter().map(|x| x.as_i64().unwrap()).collect();
                            m.sort();
                            m
                        };
                        prop_assert_eq!(set(a), set(b));
                    }
                    _ => prop_assert_eq!(a, b),
                }
            }
        }
    }
}
