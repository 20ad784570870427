//! The native CLI behind `wsi`.
//! Bad input ends with a one-line reason on stderr and a non-zero exit, never a panic.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use serde_json::json;
use wsi::config::{Device, GenerateOptions, Quantization, StreamingConfig};
use wsi::engine::any::resolve_device;
use wsi::engine::{AnyEngine, Backend, Engine, EngineOptions};
use wsi::error::{Error, Result};
use wsi::gpu::Gpu;
use wsi::tokenizer::ChatMessage;

#[derive(Parser)]
#[command(name = "wsi", version, about = "WebGPU Streaming Inference: run language models on the GPU through wgpu")]
struct Cli {
    /// A GGUF file or a Hugging Face model folder.
    #[arg(long, global = true, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    /// Weight precision on the GPU (fp32, fp16, int8, int4, int3, int2, mixed).
    #[arg(long, global = true)]
    quantization: Option<String>,
    /// StreamingConfig as a JSON object, or a path to a JSON file.
    #[arg(long, global = true)]
    config: Option<String>,
    /// Where the model runs: gpu (default), cpu (generate and bench; int4 unless a
    /// quantization is given), auto (the CPU when the adapter is a software rasteriser).
    #[arg(long, global = true)]
    device: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream a continuation of a prompt to stdout.
    Generate {
        #[arg(long)]
        prompt: String,
        /// Wrap the prompt in the model's chat template as a user message.
        #[arg(long)]
        chat: bool,
        #[arg(long)]
        max_tokens: Option<usize>,
        #[arg(long)]
        temperature: Option<f32>,
        #[arg(long)]
        top_p: Option<f32>,
        #[arg(long)]
        top_k: Option<u32>,
        #[arg(long)]
        seed: Option<u64>,
        /// Print one JSON object at the end instead of streaming text.
        #[arg(long)]
        json: bool,
    },
    /// The top-10 next-token logits after a prompt.
    Logits {
        #[arg(long)]
        prompt: String,
        #[arg(long)]
        json: bool,
    },
    /// Perplexity of a text file.
    Perplexity {
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value_t = 1024)]
        max_tokens: usize,
        #[arg(long)]
        json: bool,
        /// Score through decode steps (one per token) instead of prefill chunks: the
        /// accuracy of the decode kernels.
        #[arg(long)]
        decode: bool,
    },
    /// Measure prefill and decode speed.
    Bench {
        #[arg(long, default_value_t = 512)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 128)]
        gen_tokens: usize,
        /// A second configuration (JSON) measured in the same process; prints the ratio.
        #[arg(long)]
        compare: Option<String>,
        /// Prompt text from a file instead of synthetic ids (--prompt-tokens is ignored).
        #[arg(long)]
        prompt_file: Option<PathBuf>,
        /// A built-in prompt that repeats itself (for token prediction).
        #[arg(long, conflicts_with = "prompt_file")]
        repetitive: bool,
        /// With --compare: measure base and compare alternately this many times (both
        /// engines stay loaded) and report the median of the per-round decode ratios.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Tokens of the warm-up generation before the measured one (default: --gen-tokens,
        /// as llama-bench warms up with a whole run; a GPU that has idled runs slowly for its
        /// first few hundred ms of work).
        #[arg(long)]
        warmup_tokens: Option<usize>,
        /// Also time each kernel family of a decode step (CPU-timed, dispatches run alone).
        #[arg(long)]
        profile: bool,
        /// Instead: decode this many generations together (continuous batching) and compare
        /// their aggregate throughput with one generation through the same batched path.
        #[arg(long)]
        batch: Option<usize>,
        /// Decode with sampling at this temperature instead of greedily (seeded: runs repeat).
        #[arg(long, default_value_t = 0.0, conflicts_with = "batch")]
        temperature: f32,
        /// With --temperature: nucleus (top-p) sampling.
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        /// With --temperature: top-k sampling (0 = off).
        #[arg(long, default_value_t = 0)]
        top_k: u32,
        /// Seed of the sampler's random numbers.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// Write a random-weight GGUF of a named shape (for benchmarks without downloads).
    Synth {
        /// smollm2-135m, tinyllama-1.1b, llama2-7b, or custom (then give the dimensions).
        #[arg(long)]
        shape: String,
        /// File format of the matrices: f32, f16, q8_0, q4_0, q4_1.
        #[arg(long = "format", default_value = "q4_1")]
        format: String,
        #[arg(long)]
        layers: Option<usize>,
        #[arg(long)]
        d_model: Option<usize>,
        #[arg(long)]
        heads: Option<usize>,
        #[arg(long)]
        kv_heads: Option<usize>,
        #[arg(long)]
        d_ff: Option<usize>,
        #[arg(long)]
        vocab: Option<usize>,
        out: PathBuf,
    },
    /// Serve the WebSocket protocol on /generate and the demo page (loopback by default).
    Serve {
        /// Address to listen on; anything but a loopback address exposes the model.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port (0: any free port; the address is printed).
        #[arg(long, default_value_t = 8765)]
        port: u16,
        /// Folder of the demo page and its files.
        #[arg(long, default_value = "www")]
        www: PathBuf,
    },
    /// Write a Hugging Face folder (f32 safetensors, config.json, tokenizer.json).
    Convert {
        /// Output format (only `safetensors`).
        #[arg(long, default_value = "safetensors")]
        to: String,
        out_dir: PathBuf,
    },
}

pub fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("wsi: {} ({})", e, e.code());
        std::process::exit(1);
    }
}

fn load_config(cli: &Cli) -> Result<StreamingConfig> {
    let text = match &cli.config {
        None => "{}".to_string(),
        Some(s) if s.trim_start().starts_with('{') => s.clone(),
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| Error::invalid(format!("cannot read config file {path}: {e}")))?
        }
    };
    let mut cfg = StreamingConfig::from_json_str(&text)?;
    let given: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if let Some(q) = &cli.quantization {
        cfg.update_from_json_value(&json!({ "quantization": q }))?;
    }
    if let Some(d) = &cli.device {
        cfg.update_from_json_value(&json!({ "device": d }))?;
    }
    // The default fp16 does not run on the CPU: `--device cpu` alone means its int4
    // (lossless for the Q4 files we ship). A precision that is asked for is kept, and
    // the CPU's load refuses it if it cannot run it.
    let quantization_given = cli.quantization.is_some() || given.get("quantization").is_some();
    if cfg.device == Device::Cpu && !quantization_given {
        cfg.quantization = Quantization::Int4;
    }
    Ok(cfg)
}

/// `cfg.device` made concrete: natively "auto" is the CPU when wgpu's adapter is a software
/// one (lavapipe, llvmpipe, WARP) or there is none. Returns the GPU when it is the GPU.
fn resolve(cfg: &StreamingConfig) -> Result<(Device, Option<Gpu>)> {
    let gpu = match cfg.device {
        Device::Cpu => None,
        Device::Gpu => Some(pollster::block_on(Gpu::new())?),
        Device::Auto => pollster::block_on(Gpu::new()).ok(),
    };
    let device = resolve_device(cfg.device, cfg.quantization, gpu.as_ref().map(|g| g.caps.is_cpu));
    Ok((device, gpu.filter(|_| device == Device::Gpu)))
}

/// The engine `cfg.device` names, for the commands that run on either.
fn open_any_engine(model: &Path, cfg: &StreamingConfig) -> Result<AnyEngine> {
    let (_, gpu) = resolve(cfg)?;
    let src = wsi::model::open_path(model)?;
    if let Some(gpu) = gpu {
        return load_gpu(model, src.as_ref(), gpu, cfg).map(AnyEngine::from);
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("loading {} for the CPU", model.display()));
    let engine = AnyEngine::load_cpu(src.as_ref(), cfg, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    engine
}

/// The GPU engine, for the commands only it runs.
fn open_engine(model: &Path, cfg: &StreamingConfig) -> Result<Engine> {
    match resolve(cfg)? {
        (_, Some(gpu)) => load_gpu(model, wsi::model::open_path(model)?.as_ref(), gpu, cfg),
        (_, None) => Err(Error::invalid(format!(
            "\"device\": \"{}\" chose the CPU, but this command runs on the GPU only (generate and bench run on \
             either)",
            cfg.device
        ))),
    }
}

fn load_gpu(model: &Path, src: &dyn wsi::model::ModelSource, gpu: Gpu, cfg: &StreamingConfig) -> Result<Engine> {
    let options = EngineOptions::from_config(cfg, &gpu.caps, src.config())?;
    // A bar over the layers uploaded (the file itself is memory-mapped, not read up front).
    let bar = indicatif::ProgressBar::new(src.config().n_layers as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} layers {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("loading {}", model.display()));
    let engine = Engine::load_with_progress(gpu, src, options, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    engine
}

fn run(cli: Cli) -> Result<()> {
    let cfg = load_config(&cli)?;
    if !matches!(cli.command, Command::Synth { .. }) && !cli.model.exists() {
        return Err(Error::model(format!(
            "model {} not found (bash scripts/fetch-model.sh downloads SmolLM2)",
            cli.model.display()
        )));
    }
    match &cli.command {
        Command::Synth { shape, format, layers, d_model, heads, kv_heads, d_ff, vocab, out } => {
            use wsi::model::gguf_write::{TinySpec, tiny_gguf};
            use wsi::model::{Arch, HostFormat};
            let base = match shape.as_str() {
                "smollm2-135m" => TinySpec {
                    n_layers: 30,
                    d_model: 576,
                    n_heads: 9,
                    n_kv_heads: 3,
                    d_ff: 1536,
                    vocab: 49152,
                    context: 8192,
                    tied: true,
                },
                "tinyllama-1.1b" => TinySpec {
                    n_layers: 22,
                    d_model: 2048,
                    n_heads: 32,
                    n_kv_heads: 4,
                    d_ff: 5632,
                    vocab: 32000,
                    context: 2048,
                    tied: false,
                },
                "llama2-7b" => TinySpec {
                    n_layers: 32,
                    d_model: 4096,
                    n_heads: 32,
                    n_kv_heads: 32,
                    d_ff: 11008,
                    vocab: 32000,
                    context: 4096,
                    tied: false,
                },
                "custom" => TinySpec::default(),
                other => {
                    return Err(Error::invalid(format!(
                        "unknown shape {other}: expected smollm2-135m, tinyllama-1.1b, llama2-7b or custom"
                    )));
                }
            };
            let spec = TinySpec {
                n_layers: layers.unwrap_or(base.n_layers),
                d_model: d_model.unwrap_or(base.d_model),
                n_heads: heads.unwrap_or(base.n_heads),
                n_kv_heads: kv_heads.unwrap_or(base.n_kv_heads),
                d_ff: d_ff.unwrap_or(base.d_ff),
                vocab: vocab.unwrap_or(base.vocab),
                ..base
            };
            let fmt = match format.as_str() {
                "f32" => HostFormat::F32,
                "f16" => HostFormat::F16,
                "q8_0" => HostFormat::Q8_0,
                "q4_0" => HostFormat::Q4_0,
                "q4_1" => HostFormat::Q4_1,
                other => return Err(Error::invalid(format!("--format {other}: expected f32, f16, q8_0, q4_0, q4_1"))),
            };
            let bytes = tiny_gguf(&spec, Arch::Llama, 1, fmt)?;
            std::fs::write(out, &bytes).map_err(|e| Error::invalid(format!("cannot write {}: {e}", out.display())))?;
            eprintln!("wrote {} ({} MB, {spec:?})", out.display(), bytes.len() / 1_048_576);
            Ok(())
        }
        Command::Serve { host, port, www } => super::serve::run(open_engine(&cli.model, &cfg)?, host, *port, www),
        Command::Convert { to, out_dir } => {
            if to != "safetensors" {
                return Err(Error::invalid(format!("--to {to}: only safetensors is supported")));
            }
            let src = wsi::model::open_path(&cli.model)?;
            let tok = src.tokenizer()?;
            wsi::model::convert::convert_to_hf(src.as_ref(), &tok.to_hf_json()?, &tok.hf_config(), out_dir)?;
            eprintln!("wrote {}", out_dir.display());
            Ok(())
        }
        Command::Generate { prompt, chat, max_tokens, temperature, top_p, top_k, seed, json: as_json } => {
            let mut engine = open_any_engine(&cli.model, &cfg)?;
            let text = if *chat {
                engine
                    .tokenizer()
                    .apply_chat_template(&[ChatMessage { role: "user".into(), content: prompt.clone() }], true)?
            } else {
                prompt.clone()
            };
            let ids = engine.tokenizer().encode(&text)?;
            let opts = GenerateOptions {
                max_tokens: *max_tokens,
                temperature: *temperature,
                top_p: *top_p,
                top_k: *top_k,
                seed: *seed,
                ..Default::default()
            };
            let params = engine.params_for(&opts.resolve(&cfg, 128, clock_seed()));
            let mut out = std::io::stdout();
            let streaming = !*as_json;
            let g = pollster::block_on(engine.generate(&ids, &params, &mut |ev| {
                if streaming {
                    let _ = out.write_all(ev.text.as_bytes());
                    let _ = out.flush();
                }
                true
            }))?;
            if *as_json {
                let v = json!({
                    "text": g.text,
                    "prompt_token_ids": g.prompt_ids,
                    "token_ids": g.ids,
                    "finish_reason": g.finish_reason.as_str(),
                    "stats": engine.stats_json(&g.stats),
                });
                println!("{v}");
            } else {
                println!();
            }
            Ok(())
        }
        Command::Logits { prompt, json: as_json } => {
            let mut engine = open_engine(&cli.model, &cfg)?;
            let ids = engine.tokenizer.encode(prompt)?;
            let logits = pollster::block_on(engine.next_logits(&ids))?;
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            let top: Vec<(usize, f32)> = order.iter().take(10).map(|&i| (i, logits[i])).collect();
            if *as_json {
                println!("{}", json!({ "prompt_token_ids": ids, "top": top }));
            } else {
                for (id, l) in top {
                    let piece = engine.tokenizer.decode(&[id as u32], false).unwrap_or_default();
                    println!("{id:>7} {l:>10.4} {piece:?}");
                }
            }
            Ok(())
        }
        Command::Perplexity { file, max_tokens, json: as_json, decode } => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| Error::invalid(format!("cannot read {}: {e}", file.display())))?;
            let mut engine = open_engine(&cli.model, &cfg)?;
            let mut ids = engine.tokenizer.encode(&text)?;
            ids.truncate((*max_tokens).min(engine.model.options.context));
            if ids.len() < 2 {
                return Err(Error::invalid("the text has fewer than 2 tokens"));
            }
            let (sum, n) = if *decode {
                pollster::block_on(engine.score_decode(&ids))?
            } else {
                pollster::block_on(engine.score(&ids))?
            };
            let mean = sum / n as f64;
            let mb = engine.model.weight_bytes as f64 / 1_048_576.0;
            let (q, qms) = (engine.model.options.quantization_name(), engine.model.quantize_ms);
            if *as_json {
                println!(
                    "{}",
                    json!({ "tokens": ids.len(), "mean_nll": mean, "perplexity": mean.exp(),
                            "quantization": q, "model_memory_mb": mb, "quantize_ms": qms })
                );
            } else {
                println!(
                    "{q}: tokens {}  mean nll {mean:.4}  perplexity {:.3}  model_memory_mb {mb:.1}  quantize_ms {qms:.0}",
                    ids.len(),
                    mean.exp()
                );
            }
            Ok(())
        }
        Command::Bench {
            prompt_tokens,
            gen_tokens,
            compare,
            prompt_file,
            repetitive,
            rounds,
            warmup_tokens,
            profile,
            batch,
            temperature,
            top_p,
            top_k,
            seed,
            json: as_json,
        } => {
            let sample = wsi::sampling::SampleSettings {
                temperature: *temperature,
                top_p: *top_p,
                top_k: *top_k,
                seed: *seed,
                ..Default::default()
            };
            if let Some(b) = batch {
                let mut engine = open_engine(&cli.model, &cfg)?;
                let one = pollster::block_on(wsi::engine::bench_batch(&mut engine, *prompt_tokens, *gen_tokens, 1))?;
                let many = pollster::block_on(wsi::engine::bench_batch(&mut engine, *prompt_tokens, *gen_tokens, *b))?;
                let ratio = many.aggregate_tokens_per_second / one.aggregate_tokens_per_second;
                // GPU time per kernel family of one batched step (timestamp queries only).
                let prof = if *profile { wsi::engine::profile_batch(&mut engine, many.batch, 10)? } else { None };
                if *as_json {
                    let adapter = &engine.gpu.caps.adapter_name;
                    println!(
                        "{}",
                        json!({ "batch_1": one, "batch_n": many, "ratio": ratio, "adapter": adapter, "profile": prof })
                    );
                } else {
                    for r in [&one, &many] {
                        println!(
                            "batch {}: {:.1} tok/s aggregate, {:.1} tok/s per generation ({} tokens each, prompt {}), {} dispatches/step, KV {:.1} MiB",
                            r.batch,
                            r.aggregate_tokens_per_second,
                            r.per_sequence_tokens_per_second,
                            r.gen_tokens,
                            r.prompt_tokens,
                            r.dispatches_per_step,
                            r.kv_cache_mb
                        );
                    }
                    println!("ratio batch {}/1: {ratio:.3} [{}]", many.batch, engine.gpu.caps.adapter_name);
                    for (family, n, ms) in prof.into_iter().flatten() {
                        println!("batched step {family:18} x{n:<4} {ms:9.3} ms");
                    }
                }
                return Ok(());
            }
            let text = match (prompt_file, repetitive) {
                (Some(f), _) => Some(
                    std::fs::read_to_string(f)
                        .map_err(|e| Error::invalid(format!("cannot read {}: {e}", f.display())))?,
                ),
                (None, true) => Some(wsi::engine::REPETITIVE_PROMPT.to_string()),
                (None, false) => None,
            };
            if cfg.device != Device::Gpu && resolve(&cfg)?.0 == Device::Cpu {
                if compare.is_some() || *profile || *rounds > 1 {
                    return Err(Error::invalid(
                        "--compare, --rounds and --profile measure the GPU engine; on the CPU bench measures one run",
                    ));
                }
                let params = wsi::engine::GenerateParams {
                    sample,
                    max_tokens: *gen_tokens,
                    ignore_eos: true,
                    ..Default::default()
                };
                return bench_cpu(&cli.model, &cfg, text.as_deref(), *prompt_tokens, &params, *as_json);
            }
            let prompt_of = |engine: &Engine| -> Result<Vec<u32>> {
                match &text {
                    Some(t) => engine.tokenizer.encode(t),
                    None => Ok(wsi::engine::bench_ids(engine, *prompt_tokens)),
                }
            };
            let run_bench = |engine: &mut Engine| -> Result<wsi::engine::BenchReport> {
                let ids = prompt_of(engine)?;
                let warmup = warmup_tokens.unwrap_or(*gen_tokens);
                pollster::block_on(wsi::engine::bench_prompt(engine, &ids, *gen_tokens, &sample, warmup))
            };
            let mut engine = open_engine(&cli.model, &cfg)?;
            let base = run_bench(&mut engine)?;
            let prof = if *profile {
                let chunk = engine.model.options.chunk as u32;
                let (decode, gpu_timed) = wsi::engine::profile(&engine, 10, 0)?;
                let (prefill, _) = wsi::engine::profile(&engine, 3, chunk)?;
                let prefill_in_pass = wsi::engine::profile_prefill_in_pass(&engine, chunk, 3)?;
                let pos = (base.prompt_tokens + base.gen_tokens).min(engine.model.kv_plan().max_positions - 2);
                let (in_stream, step_ms) = wsi::engine::ablate(&mut engine, pos, 32)?;
                Some(json!({
                    "decode_in_stream": in_stream,
                    "decode_in_stream_step_ms": step_ms,
                    "decode": decode,
                    "prefill_chunk": prefill,
                    "prefill_chunk_in_pass": prefill_in_pass,
                    "chunk": chunk,
                    "timing": if gpu_timed { "gpu timestamps" } else { "cpu, each dispatch alone" },
                }))
            } else {
                None
            };
            if let (Some(p), false) = (&prof, *as_json) {
                println!("kernel times ({}):", p["timing"].as_str().unwrap_or(""));
                println!(
                    "decode step in stream: {:.3} ms; each family's share (step time saved without it):",
                    p["decode_in_stream_step_ms"].as_f64().unwrap_or(0.0)
                );
                for (what, unit) in [
                    ("decode_in_stream", "ms/token"),
                    ("decode", "ms/token"),
                    ("prefill_chunk", "ms/chunk"),
                    ("prefill_chunk_in_pass", "ms/chunk"),
                ] {
                    for row in p[what].as_array().into_iter().flatten() {
                        println!(
                            "{what:13} {:14} x{:<4} {:9.3} {unit}",
                            row[0].as_str().unwrap_or(""),
                            row[1],
                            row[2].as_f64().unwrap_or(0.0)
                        );
                    }
                }
            }
            let mut decode_rounds = Vec::new();
            let other = match compare {
                None => None,
                Some(c) => {
                    let mut cfg2 = cfg.clone();
                    cfg2.update_from_json_value(
                        &serde_json::from_str(c).map_err(|e| Error::invalid(format!("--compare: {e}")))?,
                    )?;
                    let keep = *rounds > 1;
                    let mut first = Some(engine);
                    if !keep {
                        drop(first.take()); // one engine at a time: big models fit
                    }
                    let mut e2 = open_engine(&cli.model, &cfg2)?;
                    let o = run_bench(&mut e2)?;
                    decode_rounds.push([base.decode_tokens_per_second, o.decode_tokens_per_second]);
                    if let Some(e1) = first.as_mut() {
                        // Alternate, so that load from elsewhere hits both sides alike.
                        let (p1, p2) = (prompt_of(e1)?, prompt_of(&e2)?);
                        for _ in 1..*rounds {
                            let b = pollster::block_on(wsi::engine::bench_again(e1, &p1, *gen_tokens, &sample))?;
                            let c = pollster::block_on(wsi::engine::bench_again(&mut e2, &p2, *gen_tokens, &sample))?;
                            decode_rounds.push([b.decode_tokens_per_second, c.decode_tokens_per_second]);
                        }
                    }
                    Some(o)
                }
            };
            let mut per_round: Vec<f64> = decode_rounds.iter().map(|r| r[1] / r[0]).collect();
            per_round.sort_by(f64::total_cmp);
            let ratio = other.as_ref().map(|o| {
                json!({
                    "decode": o.decode_tokens_per_second / base.decode_tokens_per_second,
                    "prefill": o.prefill_tokens_per_second / base.prefill_tokens_per_second,
                    "decode_rounds": decode_rounds,
                    "decode_median": per_round.get(per_round.len() / 2),
                })
            });
            if *as_json {
                println!("{}", json!({ "base": base, "compare": other, "ratio": ratio, "profile": prof }));
            } else {
                for (name, r) in std::iter::once(("base", &base)).chain(other.as_ref().map(|o| ("compare", o))) {
                    println!(
                        "{name:8} {} [{}] {}: prefill {:.1} tok/s ({} tokens), decode {:.1} tok/s ({} tokens), first token {:.1} ms, {} dispatches/token ({:.0} µs CPU encode, {:.0} µs GPU per step), {:.3} submits/token, prefetch {} x {} steps ({}), prediction {}: {} verifications, hit rate {:.3}",
                        r.adapter,
                        r.backend,
                        r.quantization,
                        r.prefill_tokens_per_second,
                        r.prompt_tokens,
                        r.decode_tokens_per_second,
                        r.gen_tokens,
                        r.first_token_latency_ms,
                        r.dispatches_per_token,
                        r.encode_us_per_step,
                        r.gpu_us_per_step.unwrap_or(f64::NAN),
                        r.submissions_per_token,
                        r.in_flight,
                        r.steps_per_submit,
                        r.prefetch_strategy,
                        if r.token_prediction { "on" } else { "off" },
                        r.verify_passes,
                        r.prefetch_hit_rate
                    );
                }
                if let Some(r) = ratio {
                    println!("ratio compare/base: {r}");
                }
            }
            Ok(())
        }
    }
}

/// `wsi bench` on the CPU engine: one short warm-up generation, then prefill of the prompt
/// and `params.max_tokens` decoded (EOS ignored), with the rates the engine measured.
fn bench_cpu(
    model: &Path,
    cfg: &StreamingConfig,
    text: Option<&str>,
    prompt_tokens: usize,
    params: &wsi::engine::GenerateParams,
    as_json: bool,
) -> Result<()> {
    let t0 = std::time::Instant::now();
    let mut engine = open_any_engine(model, cfg)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut ids = match text {
        Some(t) => engine.tokenizer().encode(t)?,
        None => {
            let vocab = match &engine {
                AnyEngine::Gpu(e) => e.model.config.vocab_size,
                AnyEngine::Cpu(e) => e.model.config.vocab_size,
            };
            wsi::engine::synthetic_prompt(prompt_tokens.max(1), vocab)
        }
    };
    // Room for every generated token: the bench measures decode, not the context's end.
    ids.truncate(engine.max_positions().saturating_sub(params.max_tokens).max(1));
    let warm = wsi::engine::GenerateParams { max_tokens: 4.min(params.max_tokens), ..params.clone() };
    pollster::block_on(engine.generate(&ids, &warm, &mut |_| true))?;
    let g = pollster::block_on(engine.generate(&ids, params, &mut |_| true))?;
    let (w, kv, _) = engine.memory_bytes();
    let mb = |b: u64| b as f64 / 1_048_576.0;
    let s = &g.stats;
    let report = json!({
        "device": "cpu",
        "quantization": engine.quantization_name(),
        "prompt_tokens": ids.len(),
        "gen_tokens": g.ids.len(),
        "prefill_tokens_per_second": s.prefill_tokens_per_second,
        "decode_tokens_per_second": s.tokens_per_second,
        "first_token_latency_ms": s.first_token_latency_ms,
        "weight_mb": mb(w),
        "kv_cache_mb": mb(kv),
        "load_ms": load_ms,
    });
    if as_json {
        println!("{}", json!({ "base": report, "compare": null, "ratio": null, "profile": null }));
    } else {
        println!(
            "base     cpu {}: prefill {:.1} tok/s ({} tokens), decode {:.1} tok/s ({} tokens), first token {:.1} ms, \
             weights {:.1} MiB, load {load_ms:.0} ms",
            engine.quantization_name(),
            s.prefill_tokens_per_second,
            ids.len(),
            s.tokens_per_second,
            g.ids.len(),
            s.first_token_latency_ms,
            mb(w)
        );
    }
    Ok(())
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}
