//! `wsi serve` through a real WebSocket client (tokio-tungstenite): the server runs
//! in-process on 127.0.0.1:0 over a tiny random model, and once as the built binary over
//! the real SmolLM2. The message sequence, stop within one token, pause and resume,
//! usage, concurrent clients, every bad input, and a disconnect mid-stream.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wsi::engine::{Engine, EngineOptions, GenerateParams};
use wsi::gpu::WeightFormat;
use wsi::model::gguf::GgufSource;
use wsi::model::gguf_write::{TinySpec, tiny_gguf};
use wsi::model::llama::LoadOptions;
use wsi::model::{Arch, HostFormat};
use wsi::protocol::{Interrupt, Job, MAX_FRAME_BYTES, RequestDefaults, SegmentEnd};
use wsi::serve::Scheduler;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const CONTEXT: usize = 512;

fn tiny_engine() -> Engine {
    let spec = TinySpec {
        n_layers: 2,
        d_model: 96,
        n_heads: 6,
        n_kv_heads: 2,
        d_ff: 136,
        vocab: 300,
        context: 1024,
        tied: true,
    };
    let src = GgufSource::from_bytes(tiny_gguf(&spec, Arch::Llama, 31, HostFormat::F32).expect("tiny")).expect("parse");
    let load = LoadOptions {
        format: WeightFormat::F32,
        context: CONTEXT,
        chunk: 32,
        workgroup: 64,
        threads_per_row: 64,
        rows: 2,
        attention_split: 1,
        // Two lanes for three concurrent clients: they are batched and also take turns.
        max_lanes: 2,
        ..LoadOptions::default()
    };
    let options = EngineOptions { load, steps_per_submit: 3, in_flight: 2, ..Default::default() };
    Engine::load(common::gpu(), &src, options).expect("engine")
}

/// Greedy ids and text straight from the engine, as a reference.
fn reference(engine: &mut Engine, prompt: &str, max_tokens: usize) -> (Vec<u32>, String) {
    let ids = engine.tokenizer.encode(prompt).expect("encode");
    let params = GenerateParams { max_tokens, ..Default::default() };
    let g = pollster::block_on(engine.generate(&ids, &params, &mut |_| true)).expect("generate");
    (g.ids, g.text)
}

/// A server over `engine` on an ephemeral loopback port.
async fn start(engine: Engine) -> (SocketAddr, Arc<Scheduler>) {
    let scheduler = Arc::new(Scheduler::start(engine).expect("scheduler"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let s = scheduler.clone();
    tokio::spawn(async move { wsi::serve::run(listener, s, "www".into()).await });
    (addr, scheduler)
}

async fn connect(addr: SocketAddr) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://{addr}/generate")).await.expect("connect").0
}

async fn send(ws: &mut Ws, v: &Value) {
    ws.send(Message::Text(v.to_string().into())).await.expect("send");
}

async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .expect("a frame within 120 s")
            .expect("connection open")
            .expect("frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).expect("JSON frame");
        }
    }
}

/// Frames up to and including the next `completion` or `error`.
async fn until_end(ws: &mut Ws) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let v = recv(ws).await;
        let end = v["type"] == "completion" || v["type"] == "error";
        frames.push(v);
        if end {
            return frames;
        }
    }
}

fn greedy(prompt: &str, max_tokens: usize) -> Value {
    json!({"type": "config", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
}

fn ids_of(frames: &[Value]) -> Vec<u32> {
    frames.iter().filter(|f| f["type"] == "token").filter_map(|f| f["token_id"].as_u64()).map(|i| i as u32).collect()
}

fn completion(frames: &[Value]) -> &Value {
    let last = frames.last().expect("frames");
    assert_eq!(last["type"], "completion", "{frames:?}");
    last
}

const PROMPTS: [&str; 3] = ["the cat sat on the mat", "in the beginning there was", "a tiny model says"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_sequence_is_init_tokens_and_completion_with_usage_equal_to_the_counts() {
    let mut engine = tiny_engine();
    let (want_ids, want_text) = reference(&mut engine, PROMPTS[0], 20);
    let prompt_tokens = engine.tokenizer.encode(PROMPTS[0]).expect("encode").len();
    let (addr, _s) = start(engine).await;
    let mut ws = connect(addr).await;
    send(&mut ws, &greedy(PROMPTS[0], 20)).await;
    let frames = until_end(&mut ws).await;
    assert_eq!(frames[0]["type"], "init", "{frames:?}");
    let info = &frames[0]["model_info"];
    assert_eq!((info["name"].as_str(), info["quantization"].as_str()), (Some("tiny-llama"), Some("fp32")));
    assert_eq!(info["context_length"], CONTEXT);
    let tokens: Vec<&Value> = frames.iter().filter(|f| f["type"] == "token").collect();
    assert_eq!(tokens.len() + 2, frames.len(), "init, tokens, completion only: {frames:?}");
    let (last, streamed) = tokens.split_last().expect("tokens");
    assert!(streamed.iter().all(|t| t["finished"] == false && t["token_id"].is_u64()));
    assert_eq!((last["finished"].as_bool(), last["token_id"].is_null()), (Some(true), true));
    assert_eq!(ids_of(&frames), want_ids);
    let c = completion(&frames);
    assert_eq!(c["generated_text"], want_text.as_str());
    let joined: String = tokens.iter().filter_map(|t| t["token"].as_str()).collect();
    assert_eq!(joined, want_text);
    assert_eq!(c["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(c["usage"]["completion_tokens"], want_ids.len());
    assert_eq!(c["usage"]["total_tokens"], prompt_tokens + want_ids.len());
    let want_reason = if want_ids.len() == 20 { "length" } else { "stop" };
    assert_eq!(c["finish_reason"], want_reason);
    assert!(c["timing"]["generation_time_ms"].as_f64().unwrap_or(0.0) > 0.0, "{c}");
    assert_eq!(c["timing"]["segments"], 1);
    // A second request on the same connection, without streaming and with the prompt echoed.
    send(
        &mut ws,
        &json!({"type": "config", "prompt": PROMPTS[0], "max_tokens": 20, "temperature": 0,
                          "options": {"stream": false, "echo_prompt": true, "include_timing": false}}),
    )
    .await;
    let frames = until_end(&mut ws).await;
    assert_eq!(frames.len(), 2, "init and completion only: {frames:?}");
    let c = completion(&frames);
    assert_eq!(c["generated_text"], format!("{}{want_text}", PROMPTS[0]));
    assert!(c.get("timing").is_none());
}

#[test]
fn a_stop_takes_effect_within_one_token() {
    let mut engine = tiny_engine();
    let req = wsi::protocol::Incoming::parse(&greedy(PROMPTS[1], 60).to_string(), &RequestDefaults::default());
    let Ok(wsi::protocol::Incoming::Config(req)) = req else { panic!("{req:?}") };
    for k in [1usize, 4, 7] {
        let mut job = Job::new(&engine, &req, 0).expect("job");
        // The stop is asked while token k is delivered; token k+1 must not come out.
        let asked = std::cell::Cell::new(false);
        let delivered = std::cell::Cell::new(0usize);
        let end = pollster::block_on(job.run(
            &mut engine,
            &mut || if asked.get() { Interrupt::Stop } else { Interrupt::None },
            &mut |_, _| {
                delivered.set(delivered.get() + 1);
                if delivered.get() == k {
                    asked.set(true);
                }
            },
        ))
        .expect("run");
        let SegmentEnd::Finished(end) = end else { panic!("paused") };
        assert_eq!((end.reason.as_str(), end.usage.completion_tokens, delivered.get()), ("cancelled", k, k));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_stop_mid_stream_ends_with_cancelled_and_consistent_usage() {
    let (addr, _s) = start(tiny_engine()).await;
    let mut ws = connect(addr).await;
    let max = CONTEXT - 20;
    send(&mut ws, &greedy(PROMPTS[1], max)).await;
    assert_eq!(recv(&mut ws).await["type"], "init");
    let first = recv(&mut ws).await;
    assert_eq!(first["type"], "token");
    send(&mut ws, &json!({"type": "control", "action": "stop"})).await;
    let mut frames = vec![first];
    frames.extend(until_end(&mut ws).await);
    let c = completion(&frames);
    assert_eq!(c["finish_reason"], "cancelled", "{c}");
    let n = ids_of(&frames).len();
    assert_eq!(c["usage"]["completion_tokens"], n);
    assert!(n < max, "the stop came too late to matter: {n} tokens");
}

/// Pauses after `after` tokens; tokens already on their way may arrive, then the `status`
/// "paused" frame, then nothing until the resume.
async fn paused_run(ws: &mut Ws, frame: &Value, after: usize) -> Vec<Value> {
    send(ws, frame).await;
    let mut frames = vec![recv(ws).await];
    assert_eq!(frames[0]["type"], "init");
    while ids_of(&frames).len() < after {
        let f = recv(ws).await;
        assert_eq!(f["type"], "token", "{f}");
        frames.push(f);
    }
    send(ws, &json!({"type": "control", "action": "pause"})).await;
    loop {
        let f = recv(ws).await;
        if f["type"] == "status" {
            assert_eq!(f["operation"], "paused", "{f}");
            break;
        }
        assert_eq!(f["type"], "token", "only tokens in flight may come before the pause: {f}");
        frames.push(f);
    }
    let quiet = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(quiet.is_err(), "a frame while paused: {quiet:?}");
    send(ws, &json!({"type": "control", "action": "resume"})).await;
    frames.extend(until_end(ws).await);
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_give_the_text_of_an_uninterrupted_run() {
    let (addr, _s) = start(tiny_engine()).await;
    let mut ws = connect(addr).await;
    for frame in [
        greedy(PROMPTS[2], 40),
        json!({"type": "config", "prompt": PROMPTS[2], "max_tokens": 40, "temperature": 0.9, "seed": 5}),
    ] {
        send(&mut ws, &frame).await;
        let whole = until_end(&mut ws).await;
        let want = completion(&whole).clone();
        assert!(ids_of(&whole).len() > 8, "the reference run is too short: {want}");
        let frames = paused_run(&mut ws, &frame, 3).await;
        let got = completion(&frames);
        assert_eq!(ids_of(&frames), ids_of(&whole), "{frame}");
        assert_eq!(got["generated_text"], want["generated_text"]);
        assert_eq!(got["usage"], want["usage"]);
        assert_eq!(got["finish_reason"], want["finish_reason"]);
        assert!(got["timing"]["segments"].as_u64().unwrap_or(0) >= 2, "the pause never took effect: {got}");
    }
    // A stop while paused ends the request with the tokens so far.
    send(&mut ws, &greedy(PROMPTS[2], 40)).await;
    assert_eq!(recv(&mut ws).await["type"], "init");
    assert_eq!(recv(&mut ws).await["type"], "token");
    send(&mut ws, &json!({"type": "control", "action": "pause"})).await;
    let mut frames = Vec::new();
    loop {
        let f = recv(&mut ws).await;
        if f["type"] == "status" {
            break;
        }
        frames.push(f);
    }
    send(&mut ws, &json!({"type": "control", "action": "stop"})).await;
    frames.extend(until_end(&mut ws).await);
    let c = completion(&frames);
    assert_eq!(c["finish_reason"], "cancelled");
    assert_eq!(c["usage"]["completion_tokens"], 1 + ids_of(&frames).len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_each_get_exactly_their_own_greedy_output() {
    let mut engine = tiny_engine();
    let max = 45; // past one turn, so the requests take turns
    let want: Vec<(Vec<u32>, String)> = PROMPTS.iter().map(|p| reference(&mut engine, p, max)).collect();
    let (addr, _s) = start(engine).await;
    let clients = PROMPTS.iter().map(|p| {
        let frame = greedy(p, max);
        tokio::spawn(async move {
            let mut ws = connect(addr).await;
            send(&mut ws, &frame).await;
            until_end(&mut ws).await
        })
    });
    let (mut turns, mut widest) = (0, 0);
    for (client, (ids, text)) in clients.collect::<Vec<_>>().into_iter().zip(&want) {
        let frames = client.await.expect("client");
        assert_eq!(&ids_of(&frames), ids);
        let c = completion(&frames);
        assert_eq!(c["generated_text"], text.as_str());
        assert_eq!(c["usage"]["completion_tokens"], ids.len());
        turns += c["timing"]["segments"].as_u64().unwrap_or(0);
        widest = widest.max(c["timing"]["max_batch_size"].as_u64().unwrap_or(0));
    }
    assert!(want.iter().all(|(ids, _)| ids.len() > wsi::serve::TURN_TOKENS), "a reference ended early");
    assert!(turns > 3, "no request gave its turn to another");
    assert_eq!(widest, 2, "requests were decoded together, two at a time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_error_and_the_connection_stays_usable() {
    let mut engine = tiny_engine();
    let (want_ids, _) = reference(&mut engine, PROMPTS[0], 6);
    let (addr, _s) = start(engine).await;
    let mut ws = connect(addr).await;
    let long_prompt = "the cat sat on the mat ".repeat(150);
    let cases: Vec<(String, &str, &str)> = vec![
        ("{not json".into(), "invalid_request", "JSON"),
        (json!({"type": "chat", "prompt": "x"}).to_string(), "invalid_request", "unknown frame type"),
        (json!({"type": "config", "max_tokens": 4}).to_string(), "invalid_request", "\"prompt\""),
        (json!({"type": "config", "prompt": ["x"]}).to_string(), "invalid_request", "\"prompt\""),
        (json!({"type": "config", "prompt": "x", "max_tokens": "ten"}).to_string(), "invalid_request", "max_tokens"),
        (json!({"type": "config", "prompt": "x", "top_p": true}).to_string(), "invalid_request", "top_p"),
        (json!({"type": "config", "prompt": "x".repeat(MAX_FRAME_BYTES)}).to_string(), "invalid_request", "limit"),
        (json!({"type": "control", "action": "pause"}).to_string(), "invalid_request", "config frame first"),
        (json!({"type": "config", "prompt": long_prompt}).to_string(), "context_length_exceeded", "context"),
    ];
    for (frame, code, needle) in cases {
        ws.send(Message::Text(frame.clone().into())).await.expect("send");
        let v = recv(&mut ws).await;
        let short: String = frame.chars().take(80).collect();
        assert_eq!((v["type"].as_str(), v["error"].as_str()), (Some("error"), Some(code)), "{short}: {v}");
        assert!(v["message"].as_str().unwrap_or("").contains(needle), "{short}: {v}");
        assert_eq!(v["recoverable"], true);
    }
    ws.send(Message::Binary(vec![1, 2, 3].into())).await.expect("send");
    assert_eq!(recv(&mut ws).await["error"], "invalid_request");
    // A second config while one runs is busy; the first goes on.
    send(&mut ws, &greedy(PROMPTS[0], 6)).await;
    send(&mut ws, &greedy(PROMPTS[1], 6)).await;
    let mut frames = Vec::new();
    let mut busy = 0;
    loop {
        let v = recv(&mut ws).await;
        if v["type"] == "error" {
            assert_eq!(v["error"], "busy", "{v}");
            busy += 1;
            continue;
        }
        let end = v["type"] == "completion";
        frames.push(v);
        if end {
            break;
        }
    }
    assert_eq!(busy, 1);
    assert_eq!(ids_of(&frames), want_ids);
    // And a good request after all of it.
    send(&mut ws, &greedy(PROMPTS[0], 6)).await;
    let frames = until_end(&mut ws).await;
    assert_eq!(ids_of(&frames), want_ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_stops_its_generation_and_frees_it() {
    let (addr, scheduler) = start(tiny_engine()).await;
    for pause_first in [false, true] {
        let mut ws = connect(addr).await;
        send(&mut ws, &greedy(PROMPTS[1], CONTEXT - 20)).await;
        assert_eq!(recv(&mut ws).await["type"], "init");
        assert_eq!(recv(&mut ws).await["type"], "token");
        if pause_first {
            send(&mut ws, &json!({"type": "control", "action": "pause"})).await;
        }
        assert_eq!(scheduler.requests_held(), 1);
        drop(ws);
        let t0 = std::time::Instant::now();
        while scheduler.requests_held() > 0 {
            assert!(t0.elapsed() < Duration::from_secs(30), "the request was never freed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The engine serves the next client.
    let mut ws = connect(addr).await;
    send(&mut ws, &greedy(PROMPTS[0], 4)).await;
    assert_eq!(completion(&until_end(&mut ws).await)["type"], "completion");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wsi_serve_binary_streams_the_real_model_and_serves_the_demo_page() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsi"))
        .args(["--model", "models/SmolLM2-135M-Instruct.Q4_1.gguf", "--quantization", "fp32"])
        .args(["serve", "--port", "0", "--www", "www"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn wsi serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(300), BufReader::new(stdout).read_line(&mut line))
        .await
        .expect("wsi serve starts")
        .expect("read");
    let ws_url = line.split_whitespace().find(|w| w.starts_with("ws://")).expect("address line");
    let ws_url = ws_url.trim_end_matches(',').to_string();
    let host = ws_url.trim_start_matches("ws://").trim_end_matches("/generate").to_string();
    // The demo page.
    let mut http = TcpStream::connect(&host).await.expect("http");
    http.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut page = String::new();
    http.read_to_string(&mut page).await.expect("read");
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("WebGPU Streaming Inference"), "{page:.200}");
    // A greedy request: the reference continuation (transformers, f32).
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.expect("connect");
    send(&mut ws, &greedy("Once upon a time, there was a little cat named", 10)).await;
    let frames = until_end(&mut ws).await;
    let c = completion(&frames);
    let text = c["generated_text"].as_str().unwrap_or("");
    assert!(text.starts_with(" Max who lived in a big"), "{text}");
    assert_eq!(frames[0]["model_info"]["context_length"].as_u64().map(|n| n > 0), Some(true));
    child.kill().await.expect("kill");
}

/// `"device": "cpu"`: the protocol's job runs on the CPU engine too (the browser's
/// `streamWebsocket` serves it that way): pauses cut the generation into segments with the
/// output of an uninterrupted run, and a stop ends it within one token.
#[test]
fn the_protocol_job_runs_on_the_cpu_engine() {
    use wsi::engine::{AnyEngine, Backend};
    let spec = TinySpec {
        n_layers: 2,
        d_model: 64,
        n_heads: 4,
        n_kv_heads: 2,
        d_ff: 96,
        vocab: 300,
        context: 256,
        tied: true,
    };
    let src = GgufSource::from_bytes(tiny_gguf(&spec, Arch::Llama, 7, HostFormat::Q4_1).expect("tiny")).expect("parse");
    let cfg = wsi::config::StreamingConfig::from_json_value(json!({"device": "cpu", "quantization": "int4"})).unwrap();
    let mut engine = AnyEngine::load_cpu(&src, &cfg, &mut |_, _| {}).expect("CPU engine");
    let info = wsi::protocol::model_info(&engine);
    assert_eq!((info.quantization.as_str(), info.context_length), ("int4", engine.context()));
    let req = wsi::protocol::Incoming::parse(&greedy(PROMPTS[2], 24).to_string(), &RequestDefaults::default());
    let Ok(wsi::protocol::Incoming::Config(req)) = req else { panic!("{req:?}") };
    let run = |engine: &mut AnyEngine, job: &mut Job, pause_at: Option<usize>| {
        let delivered = std::cell::Cell::new(0usize);
        let mut ids = Vec::new();
        let end = pollster::block_on(job.run(
            engine,
            &mut || if pause_at == Some(delivered.get()) { Interrupt::Pause } else { Interrupt::None },
            &mut |_, id| {
                delivered.set(delivered.get() + 1);
                ids.push(id);
            },
        ))
        .expect("run");
        (end, ids)
    };
    let mut whole = Job::new(&engine, &req, 0).expect("job");
    let (end, want) = run(&mut engine, &mut whole, None);
    assert!(matches!(end, SegmentEnd::Finished(_)), "{end:?}");
    assert!(want.len() > 3, "the reference run is too short: {want:?}");
    let mut job = Job::new(&engine, &req, 0).expect("job");
    let (end, mut got) = run(&mut engine, &mut job, Some(3));
    assert_eq!(end, SegmentEnd::Paused);
    let (end, rest) = run(&mut engine, &mut job, None);
    got.extend(rest);
    let SegmentEnd::Finished(end) = end else { panic!("paused again") };
    assert_eq!(got, want, "paused and resumed on the CPU: the same ids");
    assert_eq!(end.timing.segments, 2);
    let stats = engine.stats_json(&job.stats());
    assert_eq!(stats["device"], "cpu", "{stats}");
}
