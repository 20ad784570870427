//! Chat templates: Hugging Face Jinja templates rendered with minijinja, configured as
//! transformers does (`trim_blocks`, `lstrip_blocks`, `raise_exception`, `strftime_now`)
//! and with the Python string / dict methods templates commonly call.

use minijinja::value::ValueKind;
use minijinja::{Environment, ErrorKind, State, Value, context};

use super::ChatMessage;
use crate::error::{Error, Result};

/// ChatML, for models that ship no template.
pub(super) const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Prefix of errors raised by the template itself (`raise_exception`).
const RAISED: &str = "template raised: ";

/// Render `template` over the messages.
pub(super) fn render(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.set_unknown_method_callback(py_method);
    let tmpl =
        env.template_from_str(template).map_err(|e| Error::model(format!("chat template does not parse: {e}")))?;
    tmpl.render(context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(|e| {
        let raised = e.kind() == ErrorKind::InvalidOperation && e.detail().is_some_and(|d| d.starts_with(RAISED));
        match e.detail() {
            Some(d) if raised => Error::invalid(format!("chat template: {}", &d[RAISED.len()..])),
            _ => Error::model(format!("chat template failed: {e}")),
        }
    })
}

fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("{RAISED}{msg}")))
}

/// `strftime_now(fmt)`: the current UTC time; supports %Y %y %m %d %e %b %B %a %A %H %M %S %j %%.
fn strftime_now(fmt: String) -> String {
    let secs = web_time::SystemTime::now().duration_since(web_time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format_time(&fmt, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];

/// Format seconds since 1970 (UTC) with a subset of strftime.
fn format_time(fmt: &str, secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let yday = days as i64 - days_from_civil(year, 1, 1) + 1;
    let weekday = DAYS[(days % 7) as usize];
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('b') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem % 3600 / 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 -> (year, month 1..=12, day 1..=31), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) -> days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Python methods on strings and dicts that chat templates call.
fn py_method(
    _state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, minijinja::Error> {
    let arg = |i: usize| args.get(i).and_then(Value::as_str);
    let bad_args = || minijinja::Error::new(ErrorKind::InvalidOperation, format!("bad arguments to .{method}()"));
    if let Some(s) = value.as_str() {
        let strip_set = |c: char, set: Option<&str>| match set {
            Some(set) => set.contains(c),
            None => c.is_whitespace(),
        };
        return Ok(match method {
            "strip" => Value::from(s.trim_matches(|c| strip_set(c, arg(0)))),
            "lstrip" => Value::from(s.trim_start_matches(|c| strip_set(c, arg(0)))),
            "rstrip" => Value::from(s.trim_end_matches(|c| strip_set(c, arg(0)))),
            "startswith" => Value::from(arg(0).ok_or_else(bad_args).map(|p| s.starts_with(p))?),
            "endswith" => Value::from(arg(0).ok_or_else(bad_args).map(|p| s.ends_with(p))?),
            "upper" => Value::from(s.to_uppercase()),
            "lower" => Value::from(s.to_lowercase()),
            "capitalize" => {
                let mut cs = s.chars();
                Value::from(match cs.next() {
                    Some(f) => f.to_uppercase().chain(cs.flat_map(char::to_lowercase)).collect(),
                    None => String::new(),
                })
            }
            "replace" => {
                let (from, to) = (arg(0).ok_or_else(bad_args)?, arg(1).ok_or_else(bad_args)?);
                match args.get(2).and_then(Value::as_i64) {
                    Some(n) if n >= 0 => Value::from(s.replacen(from, to, n as usize)),
                    _ => Value::from(s.replace(from, to)),
                }
            }
            "split" => {
                let max = args.get(1).and_then(Value::as_i64).filter(|n| *n >= 0);
                let parts: Vec<String> = match (arg(0), max) {
                    (Some(sep), Some(n)) => s.splitn(n as usize + 1, sep).map(String::from).collect(),
                    (Some(sep), None) => s.split(sep).map(String::from).collect(),
                    (None, _) => s.split_whitespace().map(String::from).collect(),
                };
                Value::from(parts)
            }
            "find" => Value::from(match arg(0).and_then(|p| s.find(p)) {
                Some(byte) => s[..byte].chars().count() as i64,
                None => -1,
            }),
            "count" => Value::from(arg(0).filter(|p| !p.is_empty()).map_or(0, |p| s.matches(p).count())),
            "isdigit" => Value::from(!s.is_empty() && s.chars().all(|c| c.is_ascii_digit())),
            "isspace" => Value::from(!s.is_empty() && s.chars().all(char::is_whitespace)),
            "join" => {
                let items = args.first().ok_or_else(bad_args)?.try_iter()?;
                let parts: Vec<String> = items.map(|v| v.to_string()).collect();
                Value::from(parts.join(s))
            }
            _ => return Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        });
    }
    if value.kind() == ValueKind::Map {
        let keys: Vec<Value> = value.try_iter()?.collect();
        return Ok(match method {
            "items" => Value::from(
                keys.into_iter()
                    .map(|k| value.get_item(&k).map(|v| Value::from(vec![k, v])))
                    .collect::<std::result::Result<Vec<_>, _>>()?,
            ),
            "keys" => Value::from(keys),
            "values" => {
                Value::from(keys.iter().map(|k| value.get_item(k)).collect::<std::result::Result<Vec<_>, _>>()?)
            }
            "get" => {
                let v = value.get_item(args.first().ok_or_else(bad_args)?)?;
                if v.is_undefined() { args.get(1).cloned().unwrap_or(Value::from(())) } else { v }
            }
            _ => return Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        });
    }
    Err(minijinja::Error::from(ErrorKind::UnknownMethod))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_like_strftime() {
        // 2024-07-23 14:05:09 UTC, a Tuesday, day 205 of a leap year.
        let t = 1_721_743_509;
        assert_eq!(format_time("%d %b %Y", t), "23 Jul 2024");
        assert_eq!(format_time("%A %B %e, %y %H:%M:%S %j %%", t), "Tuesday July 23, 24 14:05:09 205 %");
        assert_eq!(format_time("%Y-%m-%d", 0), "1970-01-01");
    }

    #[test]
    fn python_methods_work_in_templates() {
        let msgs = [ChatMessage::new("user", "  Hello World  ")];
        let t = "{{ messages[0].content.strip().lower().replace('world', 'there') }}|{{ 'a,b,c'.split(',')|join('-') }}|{{ {'k': 1}.get('k') }}{{ {'k': 1}.get('x', 2) }}|{% for k, v in {'z': 3}.items() %}{{ k }}{{ v }}{% endfor %}|{{ 'abc'.startswith('ab') }}";
        let out = render(t, &msgs, false, "", "").unwrap();
        assert_eq!(out, "hello there|a-b-c|12|z3|True");
    }

    #[test]
    fn raise_exception_is_an_invalid_request() {
        let t = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}";
        let err = render(t, &[ChatMessage::new("assistant", "x")], false, "", "").unwrap_err();
        assert_eq!(err.code(), "invalid_request");
        assert!(err.to_string().contains("first must be user"), "{err}");
        let err = render("{% for %}", &[], false, "", "").unwrap_err();
        assert_eq!(err.code(), "model_loading_error");
    }
}
