// The interface of the decode GEMVs (gemv.wgsl, gemv_sg.wgsl):
//   W:  (N, K) f16, packed two halves per u32, read as vec4<u32> (8 halves); K % 8 == 0
//   x:  (M, K) f32, read as vec4<f32>;  x' = x, or with NORM x * rsqrt(mean(x^2) + eps) * gamma
//   y:  (M, N) f32; ACC: y += (residual add); SWIGLU: rows are (gate, up) pairs (see phys)
//       and y is (M, N/2) = silu(gate) * up;  BIAS: + bias[row], laid out like W's rows
//   ROPE (decode QKV): W's rows are H query, KV key, KV value heads of D; rows are taken in
//       quads (see phys) and, like rope_kv.wgsl, y is (M, H, D) rotated queries while the
//       rotated keys and the values go to the f16 KV pool at slot[m]:
//       rope (M, D/2) vec2 (cos, sin); slot (M) u32; kpool, vpool (blocks, KV, BS, D) f16 pairs
// With NORM the RMSNorm scale is applied to the row sums at the end (sum_k w*gamma*x, times
// rsqrt(mean(x^2) + eps)): the squares are summed from the same loads, with no prologue.
struct Params {
  N: u32,        // rows of W
  K: u32,        // columns of W
  eps: f32,      // RMSNorm epsilon (NORM)
  groups_x: u32, // workgroups along x (row groups are split over x and y past 65535)
  H: u32,        // ROPE: query heads
  KV: u32,       // ROPE: key/value heads
  D: u32,        // ROPE: head dim
  BS: u32,       // ROPE: tokens per KV block
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#if NORM
@group(0) @binding(4) var<storage, read> gamma: array<vec4<u32>>;
#endif
#if BIAS
@group(0) @binding(5) var<storage, read> bias: array<f32>;
#endif
#if ROPE
@group(0) @binding(6) var<storage, read> rope: array<vec2<f32>>;
@group(0) @binding(7) var<storage, read> slot: array<u32>;
@group(0) @binding(8) var<storage, read_write> kpool: array<u32>;
@group(0) @binding(9) var<storage, read_write> vpool: array<u32>;
#endif

#include lib/gemv_rows.wgsl

fn dot8(wv: vec4<u32>, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
  return dot(unpack2x16float(wv.x), xa.xy) + dot(unpack2x16float(wv.y), xa.zw)
       + dot(unpack2x16float(wv.z), xb.xy) + dot(unpack2x16float(wv.w), xb.zw);
}

// The 8 inputs matching weight vec4 i of row m's x, times gamma with NORM, their squares
// added to *ss (the RMSNorm scale is applied later, see norm_scale).
fn load_x(xbase: u32, i: u32, ss: ptr<function, f32>) -> array<vec4<f32>, 2> {
  var xa = x[xbase + 2u * i];
  var xb = x[xbase + 2u * i + 1u];
#if NORM
  *ss = *ss + dot(xa, xa) + dot(xb, xb);
  let g = gamma[i];
  xa = xa * vec4<f32>(unpack2x16float(g.x), unpack2x16float(g.y));
  xb = xb * vec4<f32>(unpack2x16float(g.z), unpack2x16float(g.w));
#endif
  return array<vec4<f32>, 2>(xa, xb);
}

// NORM: what the row sums are multiplied by, given the sum of squares of the whole row of x.
fn norm_scale(ss: f32) -> f32 {
  return inverseSqrt(ss / f32(p.K) + p.eps);
}

#if ROPE
// Writes the quad of logical rows starting at `row` (see phys): values a = elements
// (2i, 2i+1) and b = (2i + D/2, 2i + 1 + D/2) of one head, bias added; queries and keys
// rotated (x * cos + rotate_half(x) * sin), keys and values packed into the KV pool.
fn finish_rope(m: u32, row: u32, a0: f32, a1: f32, b0: f32, b1: f32) {
  var a = vec2<f32>(a0, a1);
  var b = vec2<f32>(b0, b1);
#if BIAS
  a = a + vec2<f32>(bias[phys(row)], bias[phys(row + 1u)]);
  b = b + vec2<f32>(bias[phys(row + 2u)], bias[phys(row + 3u)]);
#endif
  let half_d = p.D / 2u;
  let quads = p.D / 4u;
  let head = row / 4u / quads;
  let i = (row / 4u) % quads;
  if (head < p.H + p.KV) {
    let c0 = rope[m * half_d + 2u * i];
    let c1 = rope[m * half_d + 2u * i + 1u];
    let cs = vec2<f32>(c0.x, c1.x);
    let sn = vec2<f32>(c0.y, c1.y);
    let ra = a * cs - b * sn;
    let rb = b * cs + a * sn;
    a = ra;
    b = rb;
  }
  if (head < p.H) {
    let o = (m * p.H + head) * p.D + 2u * i;
    y[o] = a.x;
    y[o + 1u] = a.y;
    y[o + half_d] = b.x;
    y[o + half_d + 1u] = b.y;
    return;
  }
  let s = slot[m];
  let kvh = (head - p.H) % p.KV;
  let dst = (((s / p.BS) * p.KV + kvh) * p.BS + s % p.BS) * half_d + i;
  if (head < p.H + p.KV) {
    kpool[dst] = pack2x16float(a);
    kpool[dst + quads] = pack2x16float(b);
  } else {
    vpool[dst] = pack2x16float(a);
    vpool[dst + quads] = pack2x16float(b);
  }
}
#endif

// The output of row `row` (its bias added), or with SWIGLU of the pair (row, row + 1)
// given gate and up: silu(gate + bias) * (up + bias).
fn finish(m: u32, row: u32, v: f32, up: f32) {
#if SWIGLU
  var g = v;
  var u = up;
#if BIAS
  g = g + bias[phys(row)];
  u = u + bias[phys(row + 1u)];
#endif
  write_out(m, row, g / (1.0 + exp(-g)) * u);
#else
  var out = v;
#if BIAS
  out = out + bias[row];
#endif
  write_out(m, row, out);
#endif
}

// Writes one output: silu(gate) * up for a SWIGLU pair (row even), else the row's value.
fn write_out(m: u32, row: u32, v: f32) {
#if SWIGLU
  let idx = m * (p.N / 2u) + row / 2u;
#else
  let idx = m * p.N + row;
#endif
#if ACC
  y[idx] = y[idx] + v;
#else
  y[idx] = v;
#endif
}
