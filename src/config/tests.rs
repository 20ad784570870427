use serde_json::json;

use super::*;

fn parse(v: Value) -> Result<StreamingConfig> {
    StreamingConfig::from_json_value(v)
}

/// The error message of parsing `v`, which must fail with `invalid_request`.
fn err(v: Value) -> String {
    match parse(v) {
        Ok(cfg) => panic!("expected an error, got {cfg:?}"),
        Err(e) => {
            assert_eq!(e.code(), "invalid_request");
            e.to_string()
        }
    }
}

#[test]
fn defaults_match_the_design() {
    let c = StreamingConfig::default();
    assert_eq!(c.device, Device::Gpu);
    assert_eq!(c.quantization, Quantization::Fp16);
    assert_eq!(c.attention_precision, None);
    assert_eq!(c.feedforward_precision, None);
    assert!(c.kv_cache_optimization);
    assert_eq!(c.kv_cache_strategy, KvCacheStrategy::Dynamic);
    assert_eq!(c.max_kv_cache_mb, None);
    assert!(c.optimize_compute_transfer && c.optimize_for_latency && c.adaptive_batch_size);
    assert_eq!((c.initial_batch_size, c.min_batch_size, c.max_batch_size), (1, 1, 4));
    assert_eq!(c.batch_size_strategy, BatchSizeStrategy::Balanced);
    assert!(c.browser_optimizations);
    assert_eq!(c.optimize_for_browser, None);
    assert_eq!(c.conservative_memory, None);
    assert!(c.prefetch_enabled);
    assert_eq!(c.prefetch_size, 3);
    assert_eq!(c.prefetch_strategy, PrefetchStrategy::Adaptive);
    assert!(!c.token_prediction_enabled);
    assert_eq!(c.workgroup_size, None);
    assert_eq!(c.memory_limit_mb, None);
    assert_eq!((c.token_timeout_ms, c.generation_timeout_ms), (None, None));
    assert_eq!(c.max_tokens, None);
    assert_eq!((c.temperature, c.top_p, c.top_k), (0.7, 0.9, 0));
    assert_eq!(c.repetition_penalty, 1.0);
    assert_eq!(c.seed, None);
    assert!(c.stop.is_empty());
    assert!(c.validate().is_ok());
}

#[test]
fn empty_null_and_empty_text_give_defaults() {
    assert_eq!(parse(json!({})).unwrap(), StreamingConfig::default());
    assert_eq!(parse(Value::Null).unwrap(), StreamingConfig::default());
    assert_eq!(StreamingConfig::from_json_str("{}").unwrap(), StreamingConfig::default());
}

#[test]
fn every_key_in_snake_case() {
    let c = parse(json!({
        "device": "cpu",
        "quantization": "mixed",
        "attention_precision": "int8",
        "feedforward_precision": "int4",
        "kv_cache_optimization": false,
        "kv_cache_strategy": "progressive",
        "max_kv_cache_mb": 256,
        "optimize_compute_transfer": false,
        "optimize_for_latency": false,
        "adaptive_batch_size": false,
        "initial_batch_size": 2,
        "min_batch_size": 1,
        "max_batch_size": 8,
        "batch_size_strategy": "performance",
        "browser_optimizations": false,
        "optimize_for_browser": "firefox",
        "conservative_memory": true,
        "prefetch_enabled": false,
        "prefetch_size": 16,
        "prefetch_strategy": "context-aware",
        "token_prediction_enabled": true,
        "workgroup_size": [64, 2, 1],
        "memory_limit_mb": 1024,
        "token_timeout_ms": 5000,
        "generation_timeout_ms": 60000,
        "max_tokens": 128,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 40,
        "repetition_penalty": 1.1,
        "seed": 42,
        "stop": ["\n\n", "User:"]
    }))
    .unwrap();
    assert_eq!(c.device, Device::Cpu);
    assert_eq!(c.quantization, Quantization::Mixed);
    assert_eq!(c.matrix_precisions(), (Quantization::Int8, Quantization::Int4));
    assert!(!c.kv_cache_optimization);
    assert_eq!(c.kv_cache_strategy, KvCacheStrategy::Progressive);
    assert_eq!(c.max_kv_cache_mb, Some(256));
    assert!(!c.optimize_compute_transfer && !c.optimize_for_latency && !c.adaptive_batch_size);
    assert_eq!((c.initial_batch_size, c.min_batch_size, c.max_batch_size), (2, 1, 8));
    assert_eq!(c.batch_size_strategy, BatchSizeStrategy::Performance);
    assert!(!c.browser_optimizations);
    assert_eq!(c.optimize_for_browser, Some(BrowserName::Firefox));
    assert_eq!(c.conservative_memory, Some(true));
    assert!(!c.prefetch_enabled);
    assert_eq!(c.prefetch_size, 16);
    assert_eq!(c.prefetch_depth(), 1);
    assert_eq!(c.prefetch_strategy, PrefetchStrategy::ContextAware);
    assert!(c.token_prediction_enabled);
    assert_eq!(c.workgroup_size, Some([64, 2, 1]));
    assert_eq!(c.memory_limit_mb, Some(1024));
    assert_eq!(c.token_timeout_ms, Some(5000));
    assert_eq!(c.generation_timeout_ms, Some(60000));
    assert_eq!(c.max_tokens, Some(128));
    assert_eq!((c.temperature, c.top_p, c.top_k), (0.0, 1.0, 40));
    assert_eq!(c.repetition_penalty, 1.1);
    assert_eq!(c.seed, Some(42));
    assert_eq!(c.stop, vec!["\n\n".to_string(), "User:".to_string()]);
}

#[test]
fn camel_case_keys_are_accepted() {
    let c = parse(json!({
        "kvCacheStrategy": "static",
        "maxKvCacheMb": 128,
        "maxKVCacheMB": null,
        "optimizeForBrowser": "Safari",
        "initialBatchSize": 2,
        "maxBatchSize": 2,
        "prefetchStrategy": "contextAware",
        "tokenPredictionEnabled": true,
        "workgroupSize": 64,
        "topP": 0.5,
        "topK": 5,
        "repetitionPenalty": 1.2,
        "maxTokens": 7,
        "generationTimeoutMs": 1000
    }));
    // maxKvCacheMb and maxKVCacheMB are the same option.
    let e = c.unwrap_err().to_string();
    assert!(e.contains("\"maxKVCacheMB\"") && e.contains("\"maxKvCacheMb\""), "{e}");
    assert!(e.contains("max_kv_cache_mb"), "{e}");

    let c = parse(json!({
        "kvCacheStrategy": "static",
        "maxKVCacheMB": 128,
        "optimizeForBrowser": "Safari",
        "initialBatchSize": 2,
        "maxBatchSize": 2,
        "prefetchStrategy": "contextAware",
        "tokenPredictionEnabled": true,
        "workgroupSize": 64,
        "topP": 0.5,
        "topK": 5,
        "repetitionPenalty": 1.2,
        "maxTokens": 7,
        "generationTimeoutMs": 1000
    }))
    .unwrap();
    assert_eq!(c.kv_cache_strategy, KvCacheStrategy::Static);
    assert_eq!(c.max_kv_cache_mb, Some(128));
    assert_eq!(c.optimize_for_browser, Some(BrowserName::Safari));
    assert_eq!((c.initial_batch_size, c.max_batch_size), (2, 2));
    assert_eq!(c.prefetch_strategy, PrefetchStrategy::ContextAware);
    assert!(c.token_prediction_enabled);
    assert_eq!(c.workgroup_size, Some([64, 1, 1]));
    assert_eq!((c.top_p, c.top_k, c.repetition_penalty), (0.5, 5, 1.2));
    assert_eq!(c.max_tokens, Some(7));
    assert_eq!(c.generation_timeout_ms, Some(1000));
}

#[test]
fn key_case_conversion() {
    assert_eq!(value::camel_to_snake("topP"), "top_p");
    assert_eq!(value::camel_to_snake("maxKVCacheMB"), "max_kv_cache_mb");
    assert_eq!(value::camel_to_snake("max_kv_cache_mb"), "max_kv_cache_mb");
    assert_eq!(value::camel_to_snake("Temperature"), "temperature");
    assert_eq!(value::snake_to_camel("max_kv_cache_mb"), "maxKvCacheMb");
    for k in CONFIG_KEYS {
        assert_eq!(value::camel_to_snake(&value::snake_to_camel(k)), *k);
    }
}

#[test]
fn enum_values_are_lenient_about_case_and_separators() {
    for (text, want) in [
        ("context-aware", PrefetchStrategy::ContextAware),
        ("context_aware", PrefetchStrategy::ContextAware),
        ("ContextAware", PrefetchStrategy::ContextAware),
        ("FIXED", PrefetchStrategy::Fixed),
    ] {
        let c = parse(json!({ "prefetch_strategy": text })).unwrap();
        assert_eq!(c.prefetch_strategy, want, "{text}");
    }
    for q in Quantization::ALL {
        let c = parse(json!({ "quantization": q.as_str().to_uppercase() })).unwrap();
        assert_eq!(c.quantization, *q);
        assert_eq!(q.as_str().parse::<Quantization>().unwrap(), *q);
    }
    assert_eq!(Quantization::Int4.bits(), Some(4));
    assert_eq!(Quantization::Mixed.bits(), None);
    for (text, want) in [("CPU", Device::Cpu), ("Gpu", Device::Gpu), ("AUTO", Device::Auto)] {
        assert_eq!(parse(json!({ "device": text })).unwrap().device, want, "{text}");
    }
}

#[test]
fn device_values_and_errors() {
    for d in Device::ALL {
        let c = parse(json!({ "device": d.as_str(), "quantization": "int4" })).unwrap();
        assert_eq!(c.device, *d);
        assert_eq!(c.to_json_value()["device"], json!(d.as_str()));
        assert_eq!(d.as_str().parse::<Device>().unwrap(), *d);
    }
    // The CPU's precisions are checked at load (the error names them there), not here:
    // a config does not know which backend "auto" resolves to.
    assert_eq!(parse(json!({"device": "cpu", "quantization": "fp16"})).unwrap().device, Device::Cpu);
    assert_eq!(err(json!({"device": "npu"})), "invalid value \"npu\" for \"device\": expected one of gpu, cpu, auto");
    let e = err(json!({"device": true}));
    assert!(e.contains("\"device\"") && e.contains("expected a string"), "{e}");
    let e = err(json!({"devise": "cpu"}));
    assert!(e.contains("devise") && e.contains("device"), "a typo gets a suggestion: {e}");
    // null goes back to the default.
    let mut c = parse(json!({"device": "cpu"})).unwrap();
    c.update_from_json_value(&json!({"device": null})).unwrap();
    assert_eq!(c.device, Device::Gpu);
}

#[test]
fn bad_quantization_names_key_and_values() {
    assert_eq!(
        err(json!({"quantization": "int5"})),
        "invalid value \"int5\" for \"quantization\": expected one of fp32, fp16, int8, int4, int3, int2, mixed"
    );
    let e = err(json!({"quantization": 4}));
    assert!(e.contains("\"quantization\"") && e.contains("expected a string"), "{e}");
}

#[test]
fn bad_enum_values() {
    let e = err(json!({"kvCacheStrategy": "paged"}));
    assert!(e.contains("\"kvCacheStrategy\"") && e.contains("static, dynamic, progressive"), "{e}");
    let e = err(json!({"batch_size_strategy": "fast"}));
    assert!(e.contains("performance, memory, balanced"), "{e}");
    let e = err(json!({"prefetch_strategy": "greedy"}));
    assert!(e.contains("fixed, adaptive, context-aware"), "{e}");
    let e = err(json!({"optimize_for_browser": "opera"}));
    assert!(e.contains("\"optimize_for_browser\"") && e.contains("chrome, edge, firefox, safari"), "{e}");
    let e = err(json!({"optimize_for_browser": "other"}));
    assert!(e.contains("chrome, edge, firefox, safari"), "{e}");
    let e = err(json!({"optimize_for_browser": true}));
    assert!(e.contains("expected a string"), "{e}");
}

#[test]
fn precisions_only_with_mixed_and_never_mixed() {
    let e = err(json!({"quantization": "mixed", "attention_precision": "mixed"}));
    assert!(e.contains("\"attention_precision\"") && e.contains("fp32, fp16, int8, int4, int3, int2"), "{e}");
    assert!(!e.contains("int2, mixed"), "{e}");
    let e = err(json!({"feedforwardPrecision": "int4"}));
    assert!(e.contains("\"feedforward_precision\"") && e.contains("mixed") && e.contains("fp16"), "{e}");
    let c = parse(json!({"quantization": "mixed", "feedforward_precision": "int2"})).unwrap();
    assert_eq!(c.matrix_precisions(), (MIXED_DEFAULT_PRECISIONS.0, Quantization::Int2));
    let c = parse(json!({"quantization": "int4"})).unwrap();
    assert_eq!(c.matrix_precisions(), (Quantization::Int4, Quantization::Int4));
}

#[test]
fn wrong_types_name_key_and_type() {
    let cases = [
        (json!({"kv_cache_optimization": "yes"}), "\"kv_cache_optimization\"", "a boolean"),
        (json!({"prefetchEnabled": 1}), "\"prefetchEnabled\"", "a boolean"),
        (json!({"temperature": "hot"}), "\"temperature\"", "a number"),
        (json!({"top_p": [0.5]}), "\"top_p\"", "a number"),
        (json!({"max_tokens": "10"}), "\"max_tokens\"", "an integer"),
        (json!({"memory_limit_mb": {}}), "\"memory_limit_mb\"", "an integer"),
        (json!({"stop": 5}), "\"stop\"", "a string or an array of strings"),
        (json!({"stop": ["a", 3]}), "\"stop[1]\"", "a string"),
        (json!({"seed": true}), "\"seed\"", "an integer"),
        (json!({"workgroup_size": "64"}), "\"workgroup_size\"", "a number or an array"),
        (json!({"conservative_memory": "true"}), "\"conservative_memory\"", "a boolean"),
    ];
    for (v, key, expected) in cases {
        let e = err(v.clone());
        assert!(e.starts_with("invalid type for ") || e.starts_with("invalid value"), "{e}");
        assert!(e.contains(key) && e.contains(expected), "{v}: {e}");
    }
    let e = err(json!({"temperature": "hot"}));
    assert!(e.contains("got the string \"hot\""), "{e}");
}

#[test]
fn ranges_are_validated() {
    let cases = [
        (json!({"temperature": -0.1}), "\"temperature\"", ">= 0"),
        (json!({"temperature": 1e300}), "\"temperature\"", "finite"),
        (json!({"top_p": 0}), "\"top_p\"", "(0, 1]"),
        (json!({"top_p": 1.5}), "\"top_p\"", "(0, 1]"),
        (json!({"repetition_penalty": 0}), "\"repetition_penalty\"", "> 0"),
        (json!({"repetition_penalty": -1.0}), "\"repetition_penalty\"", "> 0"),
        (json!({"top_k": -1}), "\"top_k\"", ">= 0"),
        (json!({"top_k": 2.5}), "\"top_k\"", "integer"),
        (json!({"max_tokens": 0}), "\"max_tokens\"", ">= 1"),
        (json!({"prefetch_size": 0}), "\"prefetch_size\"", "from 1 to 16"),
        (json!({"prefetch_size": 17}), "\"prefetch_size\"", "from 1 to 16"),
        (json!({"max_batch_size": 65}), "\"max_batch_size\"", "from 1 to 64"),
        (json!({"min_batch_size": 0}), "\"min_batch_size\"", "from 1 to 64"),
        (json!({"memory_limit_mb": 0}), "\"memory_limit_mb\"", ">= 1"),
        (json!({"max_kv_cache_mb": 0}), "\"max_kv_cache_mb\"", ">= 1"),
        (json!({"token_timeout_ms": 0}), "\"token_timeout_ms\"", ">= 1"),
        (json!({"generation_timeout_ms": -5}), "\"generation_timeout_ms\"", ">= 1"),
        (json!({"seed": -1}), "\"seed\"", ">= 0"),
        (json!({"seed": "abc"}), "\"seed\"", "string of digits"),
        (json!({"stop": ""}), "\"stop[0]\"", "non-empty"),
        (json!({"memory_limit_mb": 5_000_000_000u64}), "\"memory_limit_mb\"", "from 1 to"),
    ];
    for (v, key, expected) in cases {
        let e = err(v.clone());
        assert!(e.contains(key) && e.contains(expected), "{v}: {e}");
    }
}

#[test]
fn batch_bounds_must_be_ordered() {
    let e = err(json!({"initial_batch_size": 8}));
    assert!(e.contains("\"initial_batch_size\" <= \"max_batch_size\"") && e.contains("1 <= 8 <= 4"), "{e}");
    let e = err(json!({"min_batch_size": 2}));
    assert!(e.contains("min_batch_size"), "{e}");
    let c = parse(json!({"min_batch_size": 4, "initial_batch_size": 4, "max_batch_size": 64})).unwrap();
    assert_eq!((c.min_batch_size, c.initial_batch_size, c.max_batch_size), (4, 4, 64));
}

#[test]
fn kv_budget_fits_memory_budget() {
    let e = err(json!({"max_kv_cache_mb": 512, "memory_limit_mb": 256}));
    assert!(e.contains("\"max_kv_cache_mb\" (512)") && e.contains("\"memory_limit_mb\" (256)"), "{e}");
    assert!(parse(json!({"max_kv_cache_mb": 256, "memory_limit_mb": 256})).is_ok());
}

#[test]
fn workgroup_size_forms_and_limits() {
    let wg = |v: Value| parse(json!({ "workgroup_size": v })).map(|c| c.workgroup_size);
    assert_eq!(wg(json!(256)).unwrap(), Some([256, 1, 1]));
    assert_eq!(wg(json!([64])).unwrap(), Some([64, 1, 1]));
    assert_eq!(wg(json!([32, 8])).unwrap(), Some([32, 8, 1]));
    assert_eq!(wg(json!([4, 4, 16])).unwrap(), Some([4, 4, 16]));
    assert_eq!(wg(json!(64.0)).unwrap(), Some([64, 1, 1]));
    assert_eq!(wg(Value::Null).unwrap(), None);
    for bad in [json!(512), json!(0), json!(96), json!([128, 4]), json!([1, 1, 128]), json!([]), json!([1, 1, 1, 1])] {
        let e = err(json!({ "workgroupSize": bad }));
        assert!(e.contains("\"workgroupSize"), "{bad}: {e}");
    }
    let e = err(json!({ "workgroup_size": [128, 4] }));
    assert!(e.contains("[128, 4, 1]") && e.contains("x*y*z <= 256"), "{e}");
}

#[test]
fn numbers_from_javascript_may_be_floats() {
    let c = parse(json!({"max_tokens": 32.0, "prefetch_size": 4.0, "seed": 7.0})).unwrap();
    assert_eq!((c.max_tokens, c.prefetch_size, c.seed), (Some(32), 4, Some(7)));
    let c = parse(json!({"seed": "18446744073709551615"})).unwrap();
    assert_eq!(c.seed, Some(u64::MAX));
}

#[test]
fn stop_accepts_one_string() {
    let c = parse(json!({"stop": "</s>"})).unwrap();
    assert_eq!(c.stop, vec!["</s>".to_string()]);
}

#[test]
fn unknown_keys_are_rejected_with_a_suggestion() {
    assert_eq!(
        err(json!({"temprature": 0.5})),
        "unknown option \"temprature\" in config: did you mean \"temperature\"?"
    );
    assert_eq!(err(json!({"maxToken": 5})), "unknown option \"maxToken\" in config: did you mean \"maxTokens\"?");
    let e = err(json!({"kv_cache": "static"}));
    assert!(e.contains("\"kv_cache\"") && e.contains("did you mean"), "{e}");
    let e = err(json!({"flux_capacitor": 1}));
    assert!(e.contains("\"flux_capacitor\"") && e.contains("known options: quantization"), "{e}");
    // Per-call-only keys are not config keys.
    let e = err(json!({"messages": []}));
    assert!(e.contains("unknown option \"messages\""), "{e}");
}

#[test]
fn not_an_object_or_not_json() {
    let e = err(json!([1, 2]));
    assert!(e.contains("config must be a JSON object") && e.contains("array"), "{e}");
    let e = StreamingConfig::from_json_str("{quantization: int4}").unwrap_err();
    assert_eq!(e.code(), "invalid_request");
    assert!(e.to_string().contains("not valid JSON"), "{e}");
    let e = "nope".parse::<StreamingConfig>().unwrap_err();
    assert_eq!(e.code(), "invalid_request");
}

#[test]
fn null_resets_to_default() {
    let mut c = parse(json!({"temperature": 0.1, "seed": 3, "stop": ["x"], "memoryLimitMb": 100})).unwrap();
    c.update_from_json_value(&json!({"temperature": null, "seed": null, "stop": null, "memoryLimitMb": null})).unwrap();
    assert_eq!(c, StreamingConfig::default());
}

#[test]
fn update_is_all_or_nothing() {
    let mut c = StreamingConfig::default();
    c.update_from_json_value(&json!({"quantization": "int4", "top_k": 10})).unwrap();
    assert_eq!((c.quantization, c.top_k), (Quantization::Int4, 10));
    let before = c.clone();
    assert!(c.update_from_json_value(&json!({"top_k": 20, "top_p": 2})).is_err());
    assert_eq!(c, before);
    assert!(c.update_from_json_value(&json!({"max_batch_size": 64, "initial_batch_size": 0})).is_err());
    assert_eq!(c, before);
}

#[test]
fn to_json_round_trips_in_snake_case() {
    let d = StreamingConfig::default().to_json_value();
    let obj = d.as_object().unwrap();
    assert_eq!(obj.len(), CONFIG_KEYS.len());
    for k in CONFIG_KEYS {
        assert!(obj.contains_key(*k), "{k}");
    }
    assert_eq!(d["temperature"], json!(0.7));
    assert_eq!(d["top_p"], json!(0.9));
    assert_eq!(d["quantization"], json!("fp16"));
    assert_eq!(d["device"], json!("gpu"));
    assert_eq!(d["max_kv_cache_mb"], Value::Null);
    assert_eq!(parse(d).unwrap(), StreamingConfig::default());

    let c = parse(json!({
        "quantization": "mixed", "attentionPrecision": "fp16", "prefetchStrategy": "context_aware",
        "workgroupSize": [32, 4], "optimizeForBrowser": "edge", "conservativeMemory": false,
        "seed": 9, "stop": ["a"], "repetitionPenalty": 1.3, "maxTokens": 3, "tokenTimeoutMs": 10
    }))
    .unwrap();
    let v = c.to_json_value();
    assert_eq!(v["prefetch_strategy"], json!("context-aware"));
    assert_eq!(v["workgroup_size"], json!([32, 4, 1]));
    assert_eq!(v["optimize_for_browser"], json!("edge"));
    assert_eq!(v["repetition_penalty"], json!(1.3));
    assert_eq!(parse(v).unwrap(), c);
}

#[test]
fn validate_catches_configs_built_in_code() {
    let bad = [
        StreamingConfig { temperature: f32::NAN, ..Default::default() },
        StreamingConfig { top_p: 0.0, ..Default::default() },
        StreamingConfig { repetition_penalty: 0.0, ..Default::default() },
        StreamingConfig { max_batch_size: 100, ..Default::default() },
        StreamingConfig { prefetch_size: 0, ..Default::default() },
        StreamingConfig { workgroup_size: Some([3, 1, 1]), ..Default::default() },
        StreamingConfig { attention_precision: Some(Quantization::Int8), ..Default::default() },
        StreamingConfig {
            quantization: Quantization::Mixed,
            feedforward_precision: Some(Quantization::Mixed),
            ..Default::default()
        },
        StreamingConfig { stop: vec![String::new()], ..Default::default() },
        StreamingConfig { max_tokens: Some(0), ..Default::default() },
        StreamingConfig { token_timeout_ms: Some(0), ..Default::default() },
    ];
    for c in bad {
        let e = c.validate().unwrap_err();
        assert_eq!(e.code(), "invalid_request", "{c:?}");
    }
}

#[test]
fn prefetch_depth_follows_switch() {
    let c = parse(json!({"prefetchSize": 5})).unwrap();
    assert_eq!(c.prefetch_depth(), 5);
}
