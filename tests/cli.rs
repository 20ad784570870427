//! The `wsi` binary: bad input gives a one-line reason and a non-zero exit (no panic
//! backtrace); the commands work on a tiny model.
#![cfg(not(target_arch = "wasm32"))]

use std::process::Command;

use serde_json::json;

fn wsi(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wsi")).args(args).output().expect("run wsi");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `wsi args`, which must succeed and print one JSON object.
fn wsi_json(args: &[&str]) -> serde_json::Value {
    let (rc, out, err) = wsi(args);
    assert_eq!(rc, 0, "{args:?}: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: one JSON object ({e}): {out}"))
}

fn assert_one_line_error(args: &[&str], code: &str) {
    let (rc, _, err) = wsi(args);
    assert_ne!(rc, 0, "{args:?} must fail");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("wsi:")).collect();
    assert_eq!(lines.len(), 1, "{args:?}: {err}");
    assert!(lines[0].contains(code), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
}

#[test]
fn bad_input_is_one_line_and_a_non_zero_exit() {
    assert_one_line_error(&["--model", "/nonexistent.gguf", "logits", "--prompt", "x"], "model_loading_error");
    let dir = std::env::temp_dir().join(format!("wsi-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00garbage").expect("write");
    let junk = junk.to_str().expect("path");
    assert_one_line_error(&["--model", junk, "logits", "--prompt", "x"], "model_loading_error");
    assert_one_line_error(
        &["--model", junk, "--config", "{\"quantisation\": 1}", "logits", "--prompt", "x"],
        "invalid_request",
    );
    assert_one_line_error(&["--model", junk, "--quantization", "int5", "logits", "--prompt", "x"], "invalid_request");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn synth_then_generate_logits_and_bench_on_a_tiny_model() {
    let dir = std::env::temp_dir().join(format!("wsi-cli-ok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let model = dir.join("tiny.gguf");
    let m = model.to_str().expect("path");
    let (rc, _, err) = wsi(&[
        "synth",
        "--shape",
        "custom",
        "--layers",
        "2",
        "--d-model",
        "64",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--d-ff",
        "96",
        "--vocab",
        "300",
        "--format",
        "q8_0",
        m,
    ]);
    assert_eq!(rc, 0, "{err}");
    let v = wsi_json(&[
        "--model",
        m,
        "--quantization",
        "fp32",
        "generate",
        "--prompt",
        "the",
        "--max-tokens",
        "5",
        "--temperature",
        "0",
        "--json",
    ]);
    for key in ["text", "prompt_token_ids", "token_ids", "finish_reason", "stats"] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert!(v["stats"]["tokens_per_second"].is_number());
    let v = wsi_json(&["--model", m, "logits", "--prompt", "the", "--json"]);
    assert_eq!(v["top"].as_array().map(|a| a.len()), Some(10));
    let v = wsi_json(&["--model", m, "bench", "--prompt-tokens", "8", "--gen-tokens", "8", "--profile", "--json"]);
    assert!(v["base"]["decode_tokens_per_second"].as_f64().unwrap_or(0.0) > 0.0);
    // The profile: every kernel family of a decode step with its dispatch count and time
    // (lavapipe has timestamp queries, so these are GPU times).
    assert_eq!(v["profile"]["timing"], "gpu timestamps", "{v}");
    let decode = v["profile"]["decode"].as_array().expect("decode rows");
    let count = |fam: &str| decode.iter().find(|r| r[0] == fam).and_then(|r| r[1].as_u64());
    for fam in ["embed", "matvec_norm", "attention", "matvec", "matvec_swiglu", "sample"] {
        assert!(count(fam).is_some(), "{fam} missing from {decode:?}");
    }
    assert_eq!(count("rope_kv"), None, "decode attention does the RoPE and KV append: {decode:?}");
    let dispatches: u64 = decode.iter().filter_map(|r| r[1].as_u64()).sum();
    assert_eq!(dispatches as f64, v["base"]["dispatches_per_token"].as_f64().expect("dispatches"), "{v}");
    assert!(decode.iter().all(|r| r[2].as_f64().is_some_and(|ms| ms >= 0.0)), "{decode:?}");
    // The prefill chunk timed inside the one pass the engine runs (lavapipe has timestamps
    // inside passes): the same families and dispatch counts as the per-pass profile.
    let counts = |what: &str| -> Vec<(String, u64)> {
        let mut rows: Vec<(String, u64)> = v["profile"][what]
            .as_array()
            .unwrap_or_else(|| panic!("{what} rows in {v}"))
            .iter()
            .map(|r| (r[0].as_str().unwrap_or("").to_string(), r[1].as_u64().unwrap_or(0)))
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(counts("prefill_chunk_in_pass"), counts("prefill_chunk"));
    // Sampled decoding (seeded top-k + top-p) through the bench, without the warm-up run.
    let v = wsi_json(&[
        "--model",
        m,
        "bench",
        "--prompt-tokens",
        "8",
        "--gen-tokens",
        "8",
        "--warmup-tokens",
        "0",
        "--temperature",
        "0.8",
        "--top-k",
        "5",
        "--top-p",
        "0.9",
        "--seed",
        "3",
        "--json",
    ]);
    assert!(v["base"]["decode_tokens_per_second"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
    let text = dir.join("t.txt");
    std::fs::write(&text, "the cat sat on the mat and the dog sat on the log").expect("write");
    let t = text.to_str().expect("path");
    let v = wsi_json(&["--model", m, "--quantization", "int3", "perplexity", "--file", t, "--json"]);
    assert!(v["perplexity"].as_f64().unwrap_or(0.0) > 1.0);
    // The Q8_0 file's matrices were quantised to int3 at load, and that took measured time.
    assert_eq!(v["quantization"], "int3");
    assert!(v["quantize_ms"].as_f64().unwrap_or(0.0) > 0.0 && v["model_memory_mb"].as_f64().is_some(), "{v}");
    // Scored through decode steps: the same tokens, the same perplexity up to float order.
    let d = wsi_json(&["--model", m, "--quantization", "int3", "perplexity", "--file", t, "--json", "--decode"]);
    let (a, b) = (v["perplexity"].as_f64().unwrap_or(0.0), d["perplexity"].as_f64().unwrap_or(-1.0));
    assert_eq!(v["tokens"], d["tokens"]);
    assert!((a - b).abs() < 1e-3 * a, "prefill {a} vs decode {b}");
    // Token prediction A/B on a prompt file, alternating rounds in one process.
    let v = wsi_json(&[
        "--model",
        m,
        "bench",
        "--prompt-file",
        text.to_str().expect("path"),
        "--gen-tokens",
        "8",
        "--rounds",
        "2",
        "--compare",
        r#"{"token_prediction_enabled": true}"#,
        "--json",
    ]);
    assert_eq!((&v["base"]["token_prediction"], &v["compare"]["token_prediction"]), (&json!(false), &json!(true)));
    assert_eq!(v["ratio"]["decode_rounds"].as_array().map(Vec::len), Some(2));
    assert!(v["compare"]["prefetch_hit_rate"].is_number());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn device_cpu_runs_generate_and_bench_and_refuses_the_rest() {
    let dir = std::env::temp_dir().join(format!("wsi-cli-cpu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let model = dir.join("tiny.gguf");
    let m = model.to_str().expect("path");
    let shape = ["--layers", "2", "--d-model", "64", "--heads", "4", "--kv-heads", "2", "--d-ff", "96"];
    let (rc, _, err) =
        wsi(&[&["synth", "--shape", "custom"][..], &shape, &["--vocab", "300", "--format", "q4_1", m]].concat());
    assert_eq!(rc, 0, "{err}");
    let gen_args = ["generate", "--prompt", "the", "--max-tokens", "5", "--temperature", "0", "--json"];
    // `--device cpu` alone means int4: the default fp16 does not run on the CPU.
    let v = wsi_json(&[&["--model", m, "--device", "cpu"][..], &gen_args].concat());
    assert_eq!(v["stats"]["device"], "cpu", "{v}");
    assert_eq!(v["stats"]["quantization"], "int4", "{v}");
    assert!(!v["token_ids"].as_array().expect("ids").is_empty(), "{v}");
    let v = wsi_json(
        &[&["--model", m, "--config", "{\"device\": \"cpu\", \"quantization\": \"int8\"}"][..], &gen_args].concat(),
    );
    assert_eq!(
        (v["stats"]["device"].as_str(), v["stats"]["quantization"].as_str()),
        (Some("cpu"), Some("int8")),
        "{v}"
    );
    let v = wsi_json(&[&["--model", m, "--quantization", "int4"][..], &gen_args].concat());
    assert_eq!(v["stats"]["device"], "gpu", "the default device: {v}");
    let bench = ["bench", "--prompt-tokens", "8", "--gen-tokens", "8", "--json"];
    let v = wsi_json(&[&["--model", m, "--device", "cpu"][..], &bench].concat());
    assert_eq!(v["base"]["device"], "cpu", "{v}");
    assert_eq!(v["base"]["gen_tokens"], 8, "EOS ignored: {v}");
    assert!(v["base"]["decode_tokens_per_second"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
    assert_one_line_error(
        &[&["--model", m, "--device", "cpu", "--quantization", "fp16"][..], &gen_args].concat(),
        "invalid_request",
    );
    assert_one_line_error(&["--model", m, "--device", "cpu", "logits", "--prompt", "the"], "invalid_request");
    assert_one_line_error(
        &[&["--model", m, "--device", "cpu"][..], &bench, &["--profile"]].concat(),
        "invalid_request",
    );
    assert_one_line_error(&["--model", m, "--device", "npu", "logits", "--prompt", "the"], "invalid_request");
    let _ = std::fs::remove_dir_all(&dir);
}
