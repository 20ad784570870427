//! Hand-written readers from `serde_json::Value`: key normalisation (snake_case or
//! camelCase), unknown-key suggestions and typed readers whose errors name the key, the
//! expected type and the accepted values.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// One key of a JSON object as the caller wrote it and as the crate knows it.
#[derive(Debug, Clone)]
pub(crate) struct Key<'a> {
    /// The key exactly as written (`"topP"`), used in error messages.
    pub written: &'a str,
    /// The snake_case form (`"top_p"`), matched against the known keys.
    pub canonical: String,
}

/// Turns `camelCase` / `PascalCase` / `snake_case` into `snake_case`; runs of capitals
/// count as one word (`maxKVCacheMB` -> `max_kv_cache_mb`).
pub(crate) fn camel_to_snake(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                let prev = chars[i - 1];
                let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
                let boundary = prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower);
                if boundary && prev != '_' {
                    out.push('_');
                }
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `max_kv_cache_mb` -> `maxKvCacheMb`.
pub(crate) fn snake_to_camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut upper = false;
    for c in s.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Edit distance (Levenshtein) between two short ASCII-ish strings.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            let cost = usize::from(ca != cb);
            row[j + 1] = (above + 1).min(row[j] + 1).min(diag + cost);
            diag = above;
        }
    }
    row[b.len()]
}

/// The known key closest to `canonical`, if it is close enough to be a typo.
pub(crate) fn closest<'k>(canonical: &str, known: &[&'k str]) -> Option<&'k str> {
    let (best, d) = known.iter().map(|k| (*k, distance(canonical, k))).min_by_key(|(_, d)| *d)?;
    if d <= (canonical.len() / 3).max(2) {
        return Some(best);
    }
    // A key that contains what was written (`kv_cache` in `max_kv_cache_mb`) is the likelier
    // meaning even when a short unrelated key (`device`) is fewer edits away.
    let best = known
        .iter()
        .copied()
        .filter(|k| k.contains(canonical) || canonical.contains(k))
        .min_by_key(|k| distance(canonical, k))?;
    (canonical.len() >= 3).then_some(best)
}

/// The error for a key that no option has, with a suggestion in the caller's spelling.
pub(crate) fn unknown_key(what: &str, written: &str, canonical: &str, known: &[&str]) -> Error {
    match closest(canonical, known) {
        Some(best) => {
            let shown = if written.chars().any(char::is_uppercase) { snake_to_camel(best) } else { best.to_string() };
            Error::invalid(format!("unknown option \"{written}\" in {what}: did you mean \"{shown}\"?"))
        }
        None => Error::invalid(format!("unknown option \"{written}\" in {what}; known options: {}", known.join(", "))),
    }
}

/// Splits an object into its keys, normalised, rejecting one option set twice
/// (`maxTokens` and `max_tokens`). `what` names the object in messages ("config").
pub(crate) fn keys<'a>(what: &str, map: &'a Map<String, Value>) -> Result<Vec<(Key<'a>, &'a Value)>> {
    let mut out: Vec<(Key<'a>, &'a Value)> = Vec::with_capacity(map.len());
    for (written, v) in map {
        let canonical = camel_to_snake(written);
        if let Some((first, _)) = out.iter().find(|(k, _)| k.canonical == canonical) {
            return Err(Error::invalid(format!(
                "\"{}\" and \"{written}\" in {what} set the same option \"{canonical}\"; give it once",
                first.written
            )));
        }
        out.push((Key { written, canonical }, v));
    }
    Ok(out)
}

/// A short description of what a value is, for "got ..." in messages.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {}", quote(s)),
        Value::Array(a) => format!("an array of {} element(s)", a.len()),
        Value::Object(_) => "an object".into(),
    }
}

/// `"s"`, shortened when long.
pub(crate) fn quote(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        format!("\"{s}\"")
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("\"{head}...\"")
    }
}

/// "invalid type for "key": expected X, got Y".
pub(crate) fn type_error(key: &str, expected: &str, v: &Value) -> Error {
    Error::invalid(format!("invalid type for \"{key}\": expected {expected}, got {}", describe(v)))
}

/// "invalid value V for "key": expected X".
pub(crate) fn value_error(key: &str, shown: impl std::fmt::Display, expected: &str) -> Error {
    Error::invalid(format!("invalid value {shown} for \"{key}\": expected {expected}"))
}

/// A JSON boolean.
pub(crate) fn read_bool(key: &str, v: &Value) -> Result<bool> {
    v.as_bool().ok_or_else(|| type_error(key, "a boolean (true or false)", v))
}

/// A JSON string.
pub(crate) fn read_str<'v>(key: &str, v: &'v Value) -> Result<&'v str> {
    v.as_str().ok_or_else(|| type_error(key, "a string", v))
}

/// A whole number in `min..=max`. Accepts integral floats (`3.0`), which is how numbers
/// arrive from JavaScript.
pub(crate) fn read_uint(key: &str, v: &Value, min: u64, max: u64) -> Result<u64> {
    let Value::Number(n) = v else {
        return Err(type_error(key, "an integer", v));
    };
    // Open-ended ranges read "an integer >= 1" unless the value is above the top.
    let above = n.as_u64().is_some_and(|x| x > max) || n.as_f64().is_some_and(|f| f > max as f64);
    let range = || {
        if max == u64::MAX || (max >= u64::from(u32::MAX) && !above) {
            format!("an integer >= {min}")
        } else {
            format!("an integer from {min} to {max}")
        }
    };
    let x = if let Some(x) = n.as_u64() {
        x
    } else if n.as_i64().is_some() {
        return Err(value_error(key, n, &range()));
    } else {
        let f = n.as_f64().unwrap_or(f64::NAN);
        // 2^53: above it an f64 no longer holds every integer.
        if f.fract() != 0.0 || !f.is_finite() || f.abs() > 9_007_199_254_740_992.0 {
            return Err(value_error(key, n, &range()));
        }
        if f < 0.0 {
            return Err(value_error(key, n, &range()));
        }
        f as u64
    };
    if x < min || x > max {
        return Err(value_error(key, n, &range()));
    }
    Ok(x)
}

/// [`read_uint`] narrowed to u32.
pub(crate) fn read_u32(key: &str, v: &Value, min: u32, max: u32) -> Result<u32> {
    let x = read_uint(key, v, u64::from(min), u64::from(max))?;
    u32::try_from(x).map_err(|_| value_error(key, x, "a 32-bit integer"))
}

/// A finite number as f32; range checks are the caller's.
pub(crate) fn read_f32(key: &str, v: &Value) -> Result<f32> {
    let Value::Number(n) = v else {
        return Err(type_error(key, "a number", v));
    };
    let f = n.as_f64().unwrap_or(f64::NAN) as f32;
    if !f.is_finite() {
        return Err(value_error(key, n, "a finite number"));
    }
    Ok(f)
}

/// A seed: a non-negative integer, or a string of decimal digits for seeds above 2^53
/// that a JavaScript number cannot hold exactly.
pub(crate) fn read_seed(key: &str, v: &Value) -> Result<u64> {
    match v {
        Value::String(s) => s.trim().parse::<u64>().map_err(|_| {
            value_error(key, quote(s), "an integer from 0 to 18446744073709551615 (a number or a string of digits)")
        }),
        Value::Number(_) => read_uint(key, v, 0, u64::MAX),
        _ => Err(type_error(key, "an integer (or a string of digits)", v)),
    }
}

/// Stop strings: one string or an array of strings, none empty.
pub(crate) fn read_stop(key: &str, v: &Value) -> Result<Vec<String>> {
    let items: Vec<&Value> = match v {
        Value::String(_) => vec![v],
        Value::Array(a) => a.iter().collect(),
        _ => return Err(type_error(key, "a string or an array of strings", v)),
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let s = item.as_str().ok_or_else(|| type_error(&format!("{key}[{i}]"), "a string", item))?;
        if s.is_empty() {
            return Err(value_error(&format!("{key}[{i}]"), "\"\"", "a non-empty string"));
        }
        out.push(s.to_string());
    }
    Ok(out)
}

/// Lower-cases and drops `-` / `_` so that `context-aware`, `context_aware`,
/// `contextAware` and `FP16` match their canonical names.
pub(crate) fn loose(s: &str) -> String {
    s.chars().filter(|c| *c != '-' && *c != '_').flat_map(char::to_lowercase).collect()
}
