//! Sampling parameters and the CPU reference of the GPU sampler.
