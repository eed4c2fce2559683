// Dummy weights on the GPU (vLLM's --load-format dummy): dst[i] packs two f16 values,
// uniform in [-amp, amp] from a counter-based hash of (seed, i), or ONES: both 1.0.
//   dst: (n) u32, each two f16
struct Params { n: u32, seed: u32, amp: f32, stride: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;

fn pcg(v: u32) -> u32 {
  let state = v * 747796405u + 2891336453u;
  let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
  return (word >> 22u) ^ word;
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  for (var i = gid.x; i < p.n; i = i + p.stride) {
#if ONES
    dst[i] = pack2x16float(vec2<f32>(1.0, 1.0));
#else
    let h = pcg(i ^ pcg(p.seed));
    let a = (f32(h & 0xffffu) / 65535.0 * 2.0 - 1.0) * p.amp;
    let b = (f32(h >> 16u) / 65535.0 * 2.0 - 1.0) * p.amp;
    dst[i] = pack2x16float(vec2<f32>(a, b));
#endif
  }
}
