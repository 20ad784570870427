//! Readers with range checks shared by [`StreamingConfig`](super::StreamingConfig) and
//! [`GenerateOptions`](super::GenerateOptions), and the checks `validate` repeats for
//! values built in code.

use serde_json::Value;

use super::value::{self, read_f32, read_u32, value_error};
use super::{MAX_WORKGROUP_DIMS, MAX_WORKGROUP_INVOCATIONS};
use crate::error::Result;

/// An f32 as the JSON number of its shortest decimal form (0.7, not 0.699999988).
pub(crate) fn f32_json(x: f32) -> Value {
    x.to_string().parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or(Value::Null, Value::Number)
}

/// A number `n` (= `[n, 1, 1]`) or an array of 1 to 3 numbers (missing ones are 1).
pub(crate) fn read_workgroup(key: &str, v: &Value) -> Result<[u32; 3]> {
    let mut wg = [1u32; 3];
    match v {
        Value::Number(_) => wg[0] = read_u32(key, v, 1, MAX_WORKGROUP_DIMS[0])?,
        Value::Array(a) if (1..=3).contains(&a.len()) => {
            for (i, item) in a.iter().enumerate() {
                wg[i] = read_u32(&format!("{key}[{i}]"), item, 1, MAX_WORKGROUP_DIMS[i])?;
            }
        }
        _ => {
            return Err(value::type_error(key, "a number or an array of 1 to 3 numbers ([x, y, z])", v));
        }
    }
    check_workgroup(key, wg)?;
    Ok(wg)
}

/// Powers of two, within WebGPU's guaranteed per-dimension and total limits.
pub(crate) fn check_workgroup(key: &str, wg: [u32; 3]) -> Result<()> {
    let shown = format!("[{}, {}, {}]", wg[0], wg[1], wg[2]);
    let expected = format!(
        "powers of two with x <= {}, y <= {}, z <= {} and x*y*z <= {MAX_WORKGROUP_INVOCATIONS}",
        MAX_WORKGROUP_DIMS[0], MAX_WORKGROUP_DIMS[1], MAX_WORKGROUP_DIMS[2]
    );
    let dims_ok = wg.iter().zip(MAX_WORKGROUP_DIMS).all(|(x, max)| x.is_power_of_two() && *x <= max);
    let total = u64::from(wg[0]) * u64::from(wg[1]) * u64::from(wg[2]);
    if !dims_ok || total > u64::from(MAX_WORKGROUP_INVOCATIONS) {
        return Err(value_error(key, shown, &expected));
    }
    Ok(())
}

/// max_tokens: 1..=u32::MAX (the same on wasm32 and 64-bit hosts).
pub(crate) fn read_max_tokens(key: &str, v: &Value) -> Result<usize> {
    let n = read_u32(key, v, 1, u32::MAX)?;
    usize::try_from(n).map_err(|_| value_error(key, n, "a smaller integer"))
}

/// temperature: a number >= 0 (0 = greedy).
pub(crate) fn read_temperature(key: &str, v: &Value) -> Result<f32> {
    let t = read_f32(key, v)?;
    if t < 0.0 {
        return Err(value_error(key, t, "a number >= 0 (0 = greedy)"));
    }
    Ok(t)
}

/// top_p: 0 < p <= 1.
pub(crate) fn read_top_p(key: &str, v: &Value) -> Result<f32> {
    let p = read_f32(key, v)?;
    if !(p > 0.0 && p <= 1.0) {
        return Err(value_error(key, p, "a number in (0, 1] (1 = off)"));
    }
    Ok(p)
}

/// repetition_penalty: > 0 (1 = off).
pub(crate) fn read_repetition_penalty(key: &str, v: &Value) -> Result<f32> {
    let r = read_f32(key, v)?;
    if r <= 0.0 {
        return Err(value_error(key, r, "a number > 0 (1 = off)"));
    }
    Ok(r)
}

/// The sampling ranges, for values built in code.
pub(crate) fn check_sampling(temperature: f32, top_p: f32, repetition_penalty: f32) -> Result<()> {
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(value_error("temperature", temperature, "a number >= 0 (0 = greedy)"));
    }
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(value_error("top_p", top_p, "a number in (0, 1] (1 = off)"));
    }
    if !(repetition_penalty.is_finite() && repetition_penalty > 0.0) {
        return Err(value_error("repetition_penalty", repetition_penalty, "a number > 0 (1 = off)"));
    }
    Ok(())
}

/// No empty stop string.
pub(crate) fn check_stop(key: &str, stop: &[String]) -> Result<()> {
    match stop.iter().position(String::is_empty) {
        Some(i) => Err(value_error(&format!("{key}[{i}]"), "\"\"", "a non-empty string")),
        None => Ok(()),
    }
}
