//! The WebSocket peer of the browser test `tests/web_websocket.rs`: a server the test page
//! connects to and then serves through `streamWebsocket`. For each connection it plays a
//! fixed script (bad frames, a greedy request while the model loads, the same request
//! paused and resumed, a stop mid-stream), checks every frame that comes back, and closes
//! with code 1000 "pass" or 4000 and the first failure (also printed on stderr).
//!
//! `cargo run --example ws_peer -- [--port 8091]`; scripts/test.sh starts it before the
//! browser phase. Native only.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    peer::main();
}

#[cfg(not(target_arch = "wasm32"))]
mod peer {
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    type Ws = WebSocketStream<TcpStream>;
    type Check<T> = Result<T, String>;

    const PROMPT: &str = "Once upon a time, there was a little cat named";
    /// Software GPUs in a headless browser are slow: a frame may take this long.
    const FRAME_TIMEOUT: Duration = Duration::from_secs(600);

    pub fn main() {
        let mut port = 8091u16;
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match (a.as_str(), args.next()) {
                ("--port", Some(p)) => port = p.parse().unwrap_or_else(|_| fail_usage()),
                _ => fail_usage(),
            }
        }
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
        rt.block_on(async move {
            let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind the peer's port");
            eprintln!("ws_peer: listening on ws://127.0.0.1:{port}");
            loop {
                let Ok((tcp, from)) = listener.accept().await else { continue };
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else { return };
                    let verdict = script(&mut ws).await;
                    let (code, reason) = match &verdict {
                        Ok(()) => (CloseCode::Normal, "pass".to_string()),
                        Err(e) => (CloseCode::Library(4000), e.chars().take(120).collect()),
                    };
                    eprintln!("ws_peer: {from}: {}", verdict.err().unwrap_or_else(|| "pass".into()));
                    let _ = ws.close(Some(CloseFrame { code, reason: reason.into() })).await;
                });
            }
        });
    }

    fn fail_usage() -> ! {
        eprintln!("usage: ws_peer [--port 8091]");
        std::process::exit(2)
    }

    async fn send(ws: &mut Ws, v: Value) -> Check<()> {
        ws.send(Message::Text(v.to_string().into())).await.map_err(|e| format!("send: {e}"))
    }

    async fn recv(ws: &mut Ws) -> Check<Value> {
        loop {
            let msg = tokio::time::timeout(FRAME_TIMEOUT, ws.next())
                .await
                .map_err(|_| "no frame within the timeout".to_string())?
                .ok_or("the page closed the socket")?
                .map_err(|e| format!("receive: {e}"))?;
            if let Message::Text(t) = msg {
                return serde_json::from_str(t.as_str()).map_err(|e| format!("a frame is not JSON ({e}): {t}"));
            }
        }
    }

    fn expect(ok: bool, what: impl FnOnce() -> String) -> Check<()> {
        if ok { Ok(()) } else { Err(what()) }
    }

    async fn expect_error(ws: &mut Ws, frame: &str, code: &str) -> Check<()> {
        ws.send(Message::Text(frame.to_string().into())).await.map_err(|e| format!("send: {e}"))?;
        let v = recv(ws).await?;
        expect(v["type"] == "error" && v["error"] == code && v["recoverable"] == true, || {
            format!("{frame} -> {v}, expected error {code}")
        })
    }

    fn greedy(max_tokens: usize) -> Value {
        json!({"type": "config", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0})
    }

    /// The ids and the text of the token frames, checked against the completion.
    fn check_request(frames: &[Value]) -> Check<(Vec<u64>, String)> {
        let completion = frames.last().ok_or("no frames")?;
        expect(completion["type"] == "completion", || format!("ended with {completion}"))?;
        let tokens: Vec<&Value> = frames.iter().filter(|f| f["type"] == "token").collect();
        let (last, streamed) = tokens.split_last().ok_or("no token frames")?;
        expect(last["finished"] == true && last["token_id"].is_null(), || format!("closing token {last}"))?;
        expect(streamed.iter().all(|t| t["finished"] == false && t["token_id"].is_u64()), || {
            "a streamed token without id or already finished".into()
        })?;
        let ids: Vec<u64> = streamed.iter().filter_map(|t| t["token_id"].as_u64()).collect();
        let text: String = tokens.iter().filter_map(|t| t["token"].as_str()).collect();
        let usage = &completion["usage"];
        let prompt = usage["prompt_tokens"].as_u64().unwrap_or(0);
        expect(usage["completion_tokens"] == ids.len() && prompt > 0, || {
            format!("usage {usage} vs {} ids", ids.len())
        })?;
        expect(usage["total_tokens"] == prompt + ids.len() as u64, || format!("usage {usage}"))?;
        expect(completion["generated_text"] == text.as_str(), || format!("text {completion} vs tokens {text:?}"))?;
        expect(last["generated_text"] == text.as_str(), || format!("closing token {last}"))?;
        Ok((ids, text))
    }

    async fn until_end(ws: &mut Ws, frames: &mut Vec<Value>) -> Check<()> {
        loop {
            let v = recv(ws).await?;
            let end = v["type"] == "completion" || v["type"] == "error";
            frames.push(v);
            if end {
                return Ok(());
            }
        }
    }

    async fn script(ws: &mut Ws) -> Check<()> {
        // Bad frames get errors and the socket stays usable.
        expect_error(ws, "{not json", "invalid_request").await?;
        expect_error(ws, r#"{"type": "control", "action": "pause"}"#, "invalid_request").await?;
        expect_error(ws, r#"{"type": "config", "max_tokens": 2}"#, "invalid_request").await?;

        // 1. The model is not loaded yet: status frames, then init, tokens, completion.
        send(ws, greedy(6)).await?;
        let mut frames = Vec::new();
        until_end(ws, &mut frames).await?;
        let init_at = frames.iter().position(|f| f["type"] == "init").ok_or("no init")?;
        expect(
            init_at > 0 && frames[..init_at].iter().all(|f| f["type"] == "status" && f["operation"] == "loading"),
            || format!("expected status frames before init: {:?}", &frames[..init_at]),
        )?;
        let info = &frames[init_at]["model_info"];
        expect(info["name"].is_string() && info["context_length"].as_u64().unwrap_or(0) > 0, || format!("{info}"))?;
        let (ids, text) = check_request(&frames[init_at + 1..])?;
        expect(!ids.is_empty(), || "no tokens".into())?;

        // 2. The same request paused after its first token, resumed once the pause took
        //    effect: the same greedy ids.
        send(ws, greedy(6)).await?;
        let mut frames = vec![recv(ws).await?];
        expect(frames[0]["type"] == "init", || format!("expected init, got {}", frames[0]))?;
        let first = recv(ws).await?;
        expect(first["type"] == "token", || format!("expected a token, got {first}"))?;
        frames.push(first);
        send(ws, json!({"type": "control", "action": "pause"})).await?;
        loop {
            let v = recv(ws).await?;
            if v["type"] == "status" && v["operation"] == "paused" {
                break;
            }
            expect(v["type"] == "token", || format!("before the pause took effect: {v}"))?;
            frames.push(v);
        }
        send(ws, json!({"type": "control", "action": "resume"})).await?;
        until_end(ws, &mut frames).await?;
        let (ids2, text2) = check_request(&frames[1..])?;
        expect(ids2 == ids && text2 == text, || format!("resumed {text2:?} vs {text:?}"))?;
        let segments = frames.last().map(|c| c["timing"]["segments"].as_u64().unwrap_or(0)).unwrap_or(0);
        expect(segments >= 2, || format!("{segments} segments after a pause"))?;

        // 3. A stop after the first token ends the request as cancelled.
        send(ws, greedy(40)).await?;
        let mut frames = vec![recv(ws).await?];
        let first = recv(ws).await?;
        expect(first["type"] == "token", || format!("expected a token, got {first}"))?;
        frames.push(first);
        send(ws, json!({"type": "control", "action": "stop"})).await?;
        until_end(ws, &mut frames).await?;
        let (ids3, _) = check_request(&frames[1..])?;
        let c = frames.last().ok_or("no completion")?;
        expect(c["finish_reason"] == "cancelled" && ids3.len() < 40, || format!("after stop: {c}"))?;
        Ok(())
    }
}
