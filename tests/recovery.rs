//! GPU failures natively, on lavapipe: a destroyed device ends the running generation
//! with an error (no hang), `Engine::recover` rebuilds the model on a new device with the
//! same greedy output, and allocations the GPU refuses are caught by error scopes as coded
//! errors.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::tiny_llama;
use wsi::engine::{Engine, EngineOptions, GenerateParams};
use wsi::gpu::{Gpu, WeightFormat};
use wsi::model::llama::LoadOptions;

fn options() -> EngineOptions {
    let load = LoadOptions { format: WeightFormat::F32, context: 64, chunk: 16, ..Default::default() };
    EngineOptions { load, steps_per_submit: 2, in_flight: 2, ..Default::default() }
}

fn greedy(e: &mut Engine) -> wsi::Result<Vec<u32>> {
    let params = GenerateParams { max_tokens: 12, ignore_eos: true, ..Default::default() };
    pollster::block_on(e.generate(&[3, 4, 5], &params, &mut |_| true)).map(|g| g.ids)
}

#[test]
fn a_destroyed_device_fails_the_generation_and_recover_restores_the_same_output() {
    let src = tiny_llama(9);
    // Its own device: destroying the test binary's shared one would break other tests.
    let gpu = pollster::block_on(Gpu::new()).expect("a GPU adapter");
    let mut e = pollster::block_on(Engine::load_checked(gpu, &src, options(), &mut |_, _| {})).expect("loads");
    let before = greedy(&mut e).expect("generates");
    assert_eq!(before.len(), 12);

    let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = lost.clone();
    e.gpu.device.set_device_lost_callback(move |_, _| flag.store(true, std::sync::atomic::Ordering::SeqCst));
    e.gpu.device.destroy();
    let err = greedy(&mut e).expect_err("a generation on a destroyed device fails");
    assert_eq!(err.code(), "gpu_error", "{err}");
    let _ = e.gpu.device.poll(wgpu::PollType::wait_indefinitely());
    assert!(lost.load(std::sync::atomic::Ordering::SeqCst), "the device-lost callback fired");

    pollster::block_on(e.recover(&src)).expect("recovers on a new device");
    assert_eq!(greedy(&mut e).expect("generates after recovery"), before, "same greedy output as before the loss");
}

#[test]
fn a_buffer_the_gpu_refuses_is_caught_by_the_load_scopes_as_a_coded_error() {
    let gpu = pollster::block_on(Gpu::new()).expect("a GPU adapter");
    let scopes = gpu.scopes();
    // One byte-word past the device's largest buffer: the GPU refuses it (validation).
    let _too_big = gpu.storage("too big", gpu.caps.max_buffer_size + 4);
    let err = pollster::block_on(scopes.check_load("allocating the KV cache")).expect_err("the scope caught it");
    assert_eq!(err.code(), "model_loading_error", "{err}");
    assert!(err.to_string().contains("allocating the KV cache"), "{err}");
    // Caught by the scope, so the uncaptured-error sink stays empty.
    gpu.take_errors().expect("nothing reached the sink");
    // A load that fits passes its scopes.
    pollster::block_on(Engine::load_checked(gpu, &tiny_llama(9), options(), &mut |_, _| {})).expect("loads");
}
