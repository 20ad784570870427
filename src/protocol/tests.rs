//! The protocol without a GPU: frame parsing, every bad input, and the session's phases.

use serde_json::{Value, json};

use super::*;
use crate::engine::FinishReason;

fn session() -> Session {
    Session::new(RequestDefaults::default())
}

/// The one error frame `actions` must be: (code, message).
fn error_of(actions: &[Action]) -> (String, String) {
    match actions {
        [Action::Send(Outgoing::Error { error, message, recoverable })] => {
            assert!(*recoverable, "{message}");
            (error.clone(), message.clone())
        }
        other => panic!("expected one error frame, got {other:?}"),
    }
}

fn start(s: &mut Session, frame: &Value) -> Request {
    match s.on_frame(&frame.to_string()).as_slice() {
        [Action::Start(r)] => (**r).clone(),
        other => panic!("expected a start, got {other:?}"),
    }
}

fn finished(reason: FinishReason, tail: &str, completion: usize) -> Finished {
    Finished {
        reason,
        tail: tail.into(),
        usage: Usage { prompt_tokens: 3, completion_tokens: completion, total_tokens: 3 + completion },
        timing: Timing { segments: 1, ..Default::default() },
    }
}

#[test]
fn config_frame_is_parsed_with_its_options() {
    let mut s = session();
    let r = start(
        &mut s,
        &json!({"type": "config", "prompt": "Hi", "max_tokens": 5, "temperature": 0, "topK": 3, "stop": ["\n"],
                "seed": 9, "options": {"stream": false, "echo_prompt": true, "includeTiming": false}}),
    );
    assert_eq!(r.prompt, "Hi");
    assert_eq!(r.options.max_tokens, Some(5));
    assert_eq!(r.options.temperature, Some(0.0));
    assert_eq!(r.options.top_k, Some(3));
    assert_eq!(r.options.seed, Some(9));
    assert_eq!(r.options.stop, Some(vec!["\n".to_string()]));
    assert_eq!(r.stream, StreamOptions { stream: false, echo_prompt: true, include_timing: false });
    assert_eq!(s.phase(), Phase::Generating);
}

#[test]
fn connection_defaults_apply_under_the_frame() {
    let d =
        RequestDefaults::from_json_value(&json!({"maxTokens": 7, "temperature": 0.5, "options": {"stream": false}}))
            .expect("defaults");
    let mut s = Session::new(d);
    let r = start(&mut s, &json!({"type": "config", "prompt": "x", "temperature": 0}));
    assert_eq!((r.options.max_tokens, r.options.temperature), (Some(7), Some(0.0)));
    assert!(!r.stream.stream);
    let bad = RequestDefaults::from_json_value(&json!({"max_tokenz": 1})).expect_err("typo");
    assert!(bad.to_string().contains("max_tokens"), "{bad}");
}

#[test]
fn whole_sequence_init_tokens_closing_token_and_completion() {
    let mut s = session();
    start(&mut s, &json!({"type": "config", "prompt": "Once", "options": {"echo_prompt": true}}));
    let info = ModelInfo { name: "m".into(), quantization: "fp32".into(), context_length: 64 };
    assert_eq!(s.on_started(info.clone()), vec![Action::Send(Outgoing::Init { model_info: info })]);
    let t = s.on_token(" upon", 11);
    assert_eq!(
        t,
        vec![Action::Send(Outgoing::Token {
            token: " upon".into(),
            token_id: Some(11),
            generated_text: "Once upon".into(),
            finished: false
        })]
    );
    s.on_token(" a", 12);
    let end = s.on_finished(finished(FinishReason::Length, "!", 2));
    let [Action::Send(Outgoing::Token { token_id: None, finished: true, token, .. }), Action::Send(c)] = end.as_slice()
    else {
        panic!("{end:?}")
    };
    assert_eq!(token, "!");
    let v: Value = serde_json::from_str(&c.to_text()).expect("json");
    assert_eq!(v["type"], "completion");
    assert_eq!(v["generated_text"], "Once upon a!");
    assert_eq!(v["finish_reason"], "length");
    assert_eq!(v["usage"], json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}));
    assert_eq!(v["timing"]["segments"], 1);
    assert_eq!(s.phase(), Phase::Idle);
    // The next request on the same connection starts from nothing.
    start(&mut s, &json!({"type": "config", "prompt": "again"}));
    s.on_token("x", 1);
    let end = s.on_finished(finished(FinishReason::Stop, "", 1));
    let Some(Action::Send(Outgoing::Completion { generated_text, .. })) = end.last() else { panic!("{end:?}") };
    assert_eq!(generated_text, "x");
}

#[test]
fn no_tokens_without_stream_and_no_timing_unless_asked() {
    let mut s = session();
    start(&mut s, &json!({"type": "config", "prompt": "p", "options": {"stream": false, "include_timing": false}}));
    assert!(s.on_token("a", 1).is_empty());
    let end = s.on_finished(finished(FinishReason::Length, "", 1));
    let [Action::Send(c)] = end.as_slice() else { panic!("{end:?}") };
    let v: Value = serde_json::from_str(&c.to_text()).expect("json");
    assert_eq!(v["generated_text"], "a");
    assert!(v.get("timing").is_none(), "{v}");
}

#[test]
fn every_bad_frame_gets_its_error_and_the_session_stays_usable() {
    let mut s = session();
    let cases: Vec<(String, &str, &str)> = vec![
        ("not json".into(), "invalid_request", "not valid JSON"),
        ("[1, 2]".into(), "invalid_request", "JSON object"),
        (json!({"prompt": "x"}).to_string(), "invalid_request", "\"type\""),
        (json!({"type": "hello"}).to_string(), "invalid_request", "unknown frame type \"hello\""),
        (json!({"type": 3}).to_string(), "invalid_request", "\"type\""),
        (json!({"type": "config"}).to_string(), "invalid_request", "\"prompt\""),
        (json!({"type": "config", "prompt": 5}).to_string(), "invalid_request", "\"prompt\""),
        (json!({"type": "config", "prompt": "x", "max_tokens": "many"}).to_string(), "invalid_request", "max_tokens"),
        (json!({"type": "config", "prompt": "x", "temperature": -1}).to_string(), "invalid_request", "temperature"),
        (json!({"type": "config", "prompt": "x", "tempreature": 1}).to_string(), "invalid_request", "temperature"),
        (json!({"type": "config", "prompt": "x", "options": {"strem": true}}).to_string(), "invalid_request", "stream"),
        (json!({"type": "config", "prompt": "x", "options": {"stream": 1}}).to_string(), "invalid_request", "stream"),
        (json!({"type": "control", "action": "stop"}).to_string(), "invalid_request", "send a config frame first"),
        (json!({"type": "control", "action": "pause"}).to_string(), "invalid_request", "send a config frame first"),
        (json!({"type": "control"}).to_string(), "invalid_request", "\"action\""),
        (json!({"type": "control", "action": "jump"}).to_string(), "invalid_request", "\"jump\""),
    ];
    for (frame, code, needle) in cases {
        let (got, message) = error_of(&s.on_frame(&frame));
        assert_eq!(got, code, "{frame}: {message}");
        assert!(message.contains(needle), "{frame}: {message} lacks {needle}");
        assert_eq!(s.phase(), Phase::Idle, "{frame}");
    }
    let big = format!(r#"{{"type":"config","prompt":"{}"}}"#, "a".repeat(MAX_FRAME_BYTES));
    let (code, message) = error_of(&s.on_frame(&big));
    assert_eq!(code, "invalid_request");
    assert!(message.contains(&MAX_FRAME_BYTES.to_string()), "{message}");
    let (code, _) = error_of(&s.on_binary(4));
    assert_eq!(code, "invalid_request");
    start(&mut s, &json!({"type": "config", "prompt": "fine"}));
}

#[test]
fn second_config_during_a_generation_is_busy() {
    let mut s = session();
    start(&mut s, &json!({"type": "config", "prompt": "a"}));
    let (code, _) = error_of(&s.on_frame(&json!({"type": "config", "prompt": "b"}).to_string()));
    assert_eq!(code, "busy");
    s.on_frame(&json!({"type": "control", "action": "pause"}).to_string());
    let (code, _) = error_of(&s.on_frame(&json!({"type": "config", "prompt": "b"}).to_string()));
    assert_eq!(code, "busy");
    assert_eq!(s.phase(), Phase::Paused);
}

#[test]
fn pause_resume_and_stop_are_forwarded_in_the_right_phases() {
    let mut s = session();
    start(&mut s, &json!({"type": "config", "prompt": "a"}));
    let ctl = |a: &str| json!({"type": "control", "action": a}).to_string();
    let (code, _) = error_of(&s.on_frame(&ctl("resume")));
    assert_eq!(code, "invalid_request");
    s.on_token("x", 4);
    assert!(s.on_paused().is_empty(), "no pause was asked");
    assert_eq!(s.on_frame(&ctl("pause")), vec![Action::Control(Control::Pause)]);
    assert_eq!(s.phase(), Phase::Paused);
    let paused = s.on_paused();
    let [Action::Send(Outgoing::Status { operation, message, .. })] = paused.as_slice() else {
        panic!("a status frame")
    };
    assert_eq!(operation, "paused");
    assert!(message.contains("after 1 tokens"), "{message}");
    assert!(s.on_frame(&ctl("pause")).is_empty());
    assert_eq!(s.on_frame(&ctl("resume")), vec![Action::Control(Control::Resume)]);
    assert_eq!(s.phase(), Phase::Generating);
    assert_eq!(s.on_frame(&ctl("stop")), vec![Action::Control(Control::Stop)]);
    // Stop is carried out by the transport, which then reports the end.
    assert_eq!(s.phase(), Phase::Generating);
    let end = s.on_finished(finished(FinishReason::Cancelled, "", 0));
    let Some(Action::Send(Outgoing::Completion { finish_reason, .. })) = end.last() else { panic!("{end:?}") };
    assert_eq!(finish_reason, "cancelled");
    assert_eq!(s.phase(), Phase::Idle);
}

#[test]
fn a_failed_request_is_an_error_and_the_next_one_starts() {
    let mut s = session();
    start(&mut s, &json!({"type": "config", "prompt": "long"}));
    let e = crate::error::Error::ContextLengthExceeded("too long".into());
    let (code, _) = error_of(&s.on_failed(&e));
    assert_eq!(code, "context_length_exceeded");
    assert_eq!(s.phase(), Phase::Idle);
    start(&mut s, &json!({"type": "config", "prompt": "short"}));
}

#[test]
fn closing_stops_a_running_request_and_silences_the_session() {
    let mut s = session();
    start(&mut s, &json!({"type": "config", "prompt": "a"}));
    assert_eq!(s.on_close(), vec![Action::Control(Control::Stop)]);
    assert!(s.on_token("x", 1).is_empty());
    assert!(s.on_finished(finished(FinishReason::Cancelled, "", 1)).is_empty());
    assert!(s.on_frame("junk").is_empty());
    let mut idle = session();
    assert!(idle.on_close().is_empty());
}

#[test]
fn status_only_while_a_request_waits() {
    let mut s = session();
    assert!(s.status("loading", Some(0.5), "x").is_empty());
    start(&mut s, &json!({"type": "config", "prompt": "a"}));
    let v: Value = match s.status("loading", Some(0.5), "layers").as_slice() {
        [Action::Send(o)] => serde_json::from_str(&o.to_text()).expect("json"),
        other => panic!("{other:?}"),
    };
    assert_eq!(v, json!({"type": "status", "operation": "loading", "progress": 0.5, "message": "layers"}));
}
