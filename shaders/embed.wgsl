// Token embedding lookup: out[state.row + t, :] = E[tokens[state.pos + t], :] for t < state.n_tokens
// (state.row: the sequence's first activation row; 0 except for a lane of a batched step).
// Token ids come from a GPU buffer, so a decode step reads the id the previous step's
// sampler wrote without a CPU round trip. The weight prelude supplies `load_w4`.

struct EmbedParams {
    d: u32,      // embedding width (multiple of 4)
    vocab: u32,
    row0: u32,   // the bound table shard holds rows row0 .. row0 + rows
    rows: u32,
}

@group(0) @binding(0) var<uniform> p: EmbedParams;
@group(0) @binding(3) var<storage, read> tokens: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> state: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k4n = p.d / 4u;
    let t = gid.y;
    if (gid.x >= k4n || t >= state[1]) {
        return;
    }
    var id = tokens[state[0] + t];
    if (id >= p.vocab) {
        id = 0u;
    }
    if (id < p.row0 || id >= p.row0 + p.rows) {
        return;  // another shard's row
    }
    out[(state[2] + t) * k4n + gid.x] = load_w4(id - p.row0, gid.x, k4n);
}
