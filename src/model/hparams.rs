//! Normalised hyper-parameters the engine uses, whatever the source.

/// Architecture family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

/// How RoPE pairs dimensions inside a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs (2i, 2i+1): GGUF llama files, whose Q/K rows were permuted for it.
    Adjacent,
    /// Pairs (i, i + head_dim/2): Hugging Face checkpoints.
    HalfSplit,
}

/// Position scaling applied before RoPE.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f32,
    },
}

/// Everything the forward pass needs to know about a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub name: String,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub rope_layout: RopeLayout,
    pub tied_embeddings: bool,
    pub qkv_bias: bool,
}

impl Arch {
    /// The Hugging Face `architectures[0]` of this family.
    pub fn hf_architecture(&self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    /// The Hugging Face `model_type` of this family.
    pub fn hf_model_type(&self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
        }
    }
}

impl ModelConfig {
    /// Width of the query projection: `n_heads * head_dim`.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of the key / value projections: `n_kv_heads * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Every weight the forward pass reads, with its shape in PyTorch order
    /// (`Output` only when the embeddings are not tied, the biases only with `qkv_bias`).
    pub fn expected_weights(&self) -> Vec<(crate::model::WeightName, Vec<usize>)> {
        use crate::model::WeightName as W;
        let (d, q, kv, ff) = (self.d_model, self.q_dim(), self.kv_dim(), self.d_ff);
        let mut out = vec![(W::TokenEmbd, vec![self.vocab_size, d]), (W::OutputNorm, vec![d])];
        if !self.tied_embeddings {
            out.push((W::Output, vec![self.vocab_size, d]));
        }
        for l in 0..self.n_layers {
            out.extend([
                (W::AttnNorm(l), vec![d]),
                (W::AttnQ(l), vec![q, d]),
                (W::AttnK(l), vec![kv, d]),
                (W::AttnV(l), vec![kv, d]),
                (W::AttnOutput(l), vec![d, q]),
                (W::FfnNorm(l), vec![d]),
                (W::FfnGate(l), vec![ff, d]),
                (W::FfnUp(l), vec![ff, d]),
                (W::FfnDown(l), vec![d, ff]),
            ]);
            if self.qkv_bias {
                out.extend([(W::AttnQBias(l), vec![q]), (W::AttnKBias(l), vec![kv]), (W::AttnVBias(l), vec![kv])]);
            }
        }
        out
    }

    /// Checks that the numbers are usable (non-zero, heads divide evenly, even head_dim).
    pub fn check(&self) -> crate::error::Result<()> {
        let fail = |m: String| Err(crate::error::Error::model(m));
        for (what, v) in [
            ("n_layers", self.n_layers),
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("d_ff", self.d_ff),
            ("vocab_size", self.vocab_size),
            ("context_length", self.context_length),
        ] {
            if v == 0 {
                return fail(format!("model config: {what} is 0"));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return fail(format!(
                "model config: n_heads {} is not a multiple of n_kv_heads {}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return fail(format!("model config: head_dim {} is odd", self.head_dim));
        }
        let cap = 1usize << 24;
        for (what, v) in [
            ("n_layers", self.n_layers),
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("head_dim", self.head_dim),
            ("d_ff", self.d_ff),
            ("vocab_size", self.vocab_size),
        ] {
            if v > cap {
                return fail(format!("model config: {what} = {v} is implausibly large"));
            }
        }
        let products = [
            ("n_heads * head_dim * d_model", self.n_heads, self.head_dim, self.d_model),
            ("n_kv_heads * head_dim * d_model", self.n_kv_heads, self.head_dim, self.d_model),
            ("vocab_size * d_model", self.vocab_size, self.d_model, 1),
            ("d_ff * d_model", self.d_ff, self.d_model, 1),
        ];
        for (what, a, b, c) in products {
            if a.checked_mul(b).and_then(|ab| ab.checked_mul(c)).is_none() {
                return fail(format!("model config: {what} overflows"));
            }
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            return fail(format!("model config: rms_eps {} is not positive", self.rms_eps));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return fail(format!("model config: rope_theta {} is not positive", self.rope_theta));
        }
        if let RopeScaling::Linear { factor } = self.rope_scaling
            && !(factor.is_finite() && factor > 0.0)
        {
            return fail(format!("model config: rope scaling factor {factor} is not positive"));
        }
        Ok(())
    }
}
