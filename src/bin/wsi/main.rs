//! wsi: the native command-line tool (generate, logits, perplexity, bench, synth, convert, serve).
//! Not built for the browser; the wasm32 stub keeps `cargo build --all-targets` working there.

#[cfg(not(target_arch = "wasm32"))]
mod cli;
#[cfg(not(target_arch = "wasm32"))]
mod serve;

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    cli::main();
}

#[cfg(target_arch = "wasm32")]
fn main() {}
