// Hidden-state rows between the residual stream (f32) and their fp16 records on disk (policy
// `recompute`, engine/kv/tiered/recompute.ts): NARROW writes x rows [0, M) into h rows
// [row0, row0 + M) as f16 (a layer-major prefill keeps its layer's input); without it, h rows
// [row0, row0 + M) are widened into x rows [0, M) (a recompute's input). One thread per pair.
//   x: (M, K) f32 as vec2;  h: (rows, K) f16 pairs as u32;  K % 2 == 0
struct Params { M: u32, K: u32, row0: u32, _a: u32 }
@group(0) @binding(0) var<uniform> p: Params;
#if NARROW
@group(0) @binding(1) var<storage, read> x: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> h: array<u32>;
#else
@group(0) @binding(1) var<storage, read_write> x: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> h: array<u32>;
#endif

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let k2 = p.K / 2u;
  let m = gid.y;
  let i = gid.x;
  if (m >= p.M || i >= k2) { return; }
#if NARROW
  // Values beyond f16's range saturate (a residual stream this large would be an outlier of its own).
  h[(p.row0 + m) * k2 + i] = pack2x16float(clamp(x[m * k2 + i], vec2<f32>(-65504.0), vec2<f32>(65504.0)));
#else
  x[m * k2 + i] = unpack2x16float(h[(p.row0 + m) * k2 + i]);
#endif
}
