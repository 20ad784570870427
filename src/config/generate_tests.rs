use serde_json::json;

use super::*;

fn opts(v: Value) -> Result<GenerateOptions> {
    GenerateOptions::from_json_value(v)
}

fn err(v: Value) -> String {
    match opts(v) {
        Ok(o) => panic!("expected an error, got {o:?}"),
        Err(e) => {
            assert_eq!(e.code(), "invalid_request");
            e.to_string()
        }
    }
}

#[test]
fn null_and_number_forms() {
    assert_eq!(opts(Value::Null).unwrap(), GenerateOptions::default());
    assert_eq!(opts(json!(64)).unwrap(), GenerateOptions::with_max_tokens(64));
    assert_eq!(opts(json!(64.0)).unwrap().max_tokens, Some(64));
    let e = err(json!(0));
    assert!(e.contains("\"max_tokens\""), "{e}");
    let e = err(json!("ten"));
    assert!(e.contains("object or a number"), "{e}");
}

#[test]
fn every_key_snake_and_camel() {
    let a = opts(json!({
        "max_tokens": 10, "temperature": 0, "top_p": 0.8, "top_k": 20,
        "repetition_penalty": 1.05, "seed": 1234, "stop": ["\n"],
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "chat": true
    }))
    .unwrap();
    let b = opts(json!({
        "maxTokens": 10, "temperature": 0.0, "topP": 0.8, "topK": 20,
        "repetitionPenalty": 1.05, "seed": "1234", "stop": "\n",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "chat": true
    }))
    .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.max_tokens, Some(10));
    assert_eq!(a.temperature, Some(0.0));
    assert_eq!(a.top_p, Some(0.8));
    assert_eq!(a.top_k, Some(20));
    assert_eq!(a.repetition_penalty, Some(1.05));
    assert_eq!(a.seed, Some(1234));
    assert_eq!(a.stop, Some(vec!["\n".to_string()]));
    assert_eq!(a.messages.len(), 2);
    assert_eq!(a.messages[1], ChatMessage { role: "user".into(), content: "Hi".into() });
    assert!(a.chat && a.uses_chat_template());
    assert!(a.validate().is_ok());
}

#[test]
fn messages_alone_imply_the_chat_template() {
    let o = opts(json!({"messages": [{"role": "user", "content": "x"}]})).unwrap();
    assert!(!o.chat && o.uses_chat_template());
    assert!(!GenerateOptions::default().uses_chat_template());
}

#[test]
fn bad_messages() {
    let e = err(json!({"messages": "hi"}));
    assert!(e.contains("\"messages\"") && e.contains("array"), "{e}");
    let e = err(json!({"messages": [{"role": "robot", "content": "x"}]}));
    assert!(e.contains("\"messages[0].role\"") && e.contains("system, user, assistant, tool"), "{e}");
    let e = err(json!({"messages": [{"role": "user"}]}));
    assert!(e.contains("\"messages[0]\" has no \"content\""), "{e}");
    let e = err(json!({"messages": [{"role": "user", "content": 5}]}));
    assert!(e.contains("\"messages[0].content\"") && e.contains("a string"), "{e}");
    let e = err(json!({"messages": [{"role": "user", "content": "x", "name": "bob"}]}));
    assert!(e.contains("\"name\"") && e.contains("messages[0]"), "{e}");
    let e = err(json!({"messages": [1]}));
    assert!(e.contains("\"messages[0]\""), "{e}");
}

#[test]
fn bad_values_and_types() {
    for (v, key, expected) in [
        (json!({"temperature": -1}), "\"temperature\"", ">= 0"),
        (json!({"topP": 0}), "\"topP\"", "(0, 1]"),
        (json!({"top_k": "5"}), "\"top_k\"", "an integer"),
        (json!({"repetition_penalty": 0}), "\"repetition_penalty\"", "> 0"),
        (json!({"seed": 1.5}), "\"seed\"", "integer"),
        (json!({"stop": [""]}), "\"stop[0]\"", "non-empty"),
        (json!({"chat": "yes"}), "\"chat\"", "a boolean"),
        (json!({"maxTokens": -3}), "\"maxTokens\"", ">= 1"),
    ] {
        let e = err(v.clone());
        assert!(e.contains(key) && e.contains(expected), "{v}: {e}");
    }
}

#[test]
fn unknown_and_instance_keys() {
    assert_eq!(
        err(json!({"max_new_tokens": 5})),
        "unknown option \"max_new_tokens\" in generation options: did you mean \"max_tokens\"?"
    );
    assert_eq!(err(json!({"topp": 0.5})), "unknown option \"topp\" in generation options: did you mean \"top_p\"?");
    let e = err(json!({"quantization": "int4"}));
    assert!(e.contains("\"quantization\" is an instance option"), "{e}");
    let e = err(json!({"maxTokens": 1, "max_tokens": 2}));
    assert!(e.contains("same option"), "{e}");
}

#[test]
fn extra_keys_are_handed_back() {
    let frame = json!({
        "prompt": "Hello", "maxTokens": 5, "options": {"stream": true, "echoPrompt": false}
    });
    let (o, rest) = GenerateOptions::from_json_value_with_extra(&frame, &["prompt", "options"]).unwrap();
    assert_eq!(o.max_tokens, Some(5));
    assert_eq!(rest["prompt"], json!("Hello"));
    assert_eq!(rest["options"]["stream"], json!(true));
    let e = GenerateOptions::from_json_value_with_extra(&json!({"promt": "x"}), &["prompt"]).unwrap_err();
    assert!(e.to_string().contains("did you mean \"prompt\""), "{e}");
}

#[test]
fn resolve_prefers_call_then_config_then_fallback() {
    let cfg = StreamingConfig::from_json_value(json!({
        "temperature": 0.5, "topK": 40, "stop": ["END"], "maxTokens": 100
    }))
    .unwrap();
    let p = GenerateOptions::default().resolve(&cfg, 256, 99);
    assert_eq!(
        p,
        SamplingParams {
            temperature: 0.5,
            top_p: 0.9,
            top_k: 40,
            repetition_penalty: 1.0,
            seed: 99,
            max_tokens: 100,
            stop: vec!["END".into()],
        }
    );
    let call = opts(json!({"temperature": 0, "topK": 0, "seed": 7, "stop": [], "maxTokens": 3})).unwrap();
    let p = call.resolve(&cfg, 256, 99);
    assert_eq!((p.temperature, p.top_k, p.seed, p.max_tokens), (0.0, 0, 7, 3));
    assert!(p.stop.is_empty());
    assert!(p.is_greedy());

    let p = GenerateOptions::default().resolve(&StreamingConfig::default(), 256, 5);
    assert_eq!((p.temperature, p.top_p, p.max_tokens, p.seed), (0.7, 0.9, 256, 5));
    assert!(!p.is_greedy());

    let seeded = StreamingConfig { seed: Some(11), ..Default::default() };
    assert_eq!(GenerateOptions::default().resolve(&seeded, 1, 5).seed, 11);
}

#[test]
fn greedy_params() {
    let g = SamplingParams::greedy(16);
    assert!(g.is_greedy());
    assert_eq!((g.max_tokens, g.top_p, g.top_k, g.repetition_penalty), (16, 1.0, 0, 1.0));
}

#[test]
fn validate_catches_options_built_in_code() {
    for o in [
        GenerateOptions { max_tokens: Some(0), ..Default::default() },
        GenerateOptions { temperature: Some(-1.0), ..Default::default() },
        GenerateOptions { top_p: Some(1.5), ..Default::default() },
        GenerateOptions { repetition_penalty: Some(0.0), ..Default::default() },
        GenerateOptions { stop: Some(vec![String::new()]), ..Default::default() },
        GenerateOptions {
            messages: vec![ChatMessage { role: "x".into(), content: String::new() }],
            ..Default::default()
        },
    ] {
        assert_eq!(o.validate().unwrap_err().code(), "invalid_request", "{o:?}");
    }
}

#[test]
fn from_json_str_works() {
    let o = GenerateOptions::from_json_str(r#"{"maxTokens": 2}"#).unwrap();
    assert_eq!(o.max_tokens, Some(2));
    assert!(GenerateOptions::from_json_str("{").is_err());
}
