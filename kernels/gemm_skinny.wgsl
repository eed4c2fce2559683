// Batched decode's projections on the GPU's matrix units (Dawn's subgroup matrices, f16 x f16
// -> f32, 16x16x16): y[m, n] (+)= sum_k xh[m, k] * W[n, k] (+ bias) for a few rows m (the
// batch, padded to 16), reading every weight once per 16 rows. Decode at B <= 16 is bound by
// weight bandwidth, so the kernel is built to stream W: both operands are loaded straight from
// global memory (xh, 16 rows, stays in cache), no workgroup staging, no barrier in the loop.
//   xh: (rows, K) f16, rows a multiple of 16 (half_rows.wgsl: x rounded, RMSNorm applied);
//   W: (N, K) f16 as stored;  y: (M, N) f32, or with SWIGLU (M, N/2) = silu(gate) * up where
//   W = [gate; up] (rows [0, N/2) and [N/2, N)); ACC adds into y (the residual); BIAS adds
//   bias[n] (SWIGLU: to gate and up before the activation). N (SWIGLU: N/2) and K multiples of 16.
// A workgroup owns 16 output columns (COLS2: 32, COLS4: 64) for the 16 rows of workgroup z, as SPLIT
// subgroups that each take every SPLIT-th 16-wide step of K (neighbouring subgroups read
// neighbouring bytes of each weight row), four steps' loads issued before their multiplies;
// each left tile (16 rows of xh) serves R right tiles: R2 = SWIGLU or COLS2 (2), R4 = both, or
// COLS4 (4; the including code sets R2 and R4 from the flags). The SPLIT partial tiles are summed
// through workgroup memory in the epilogue, one output tile at a time. Offsets of matrix loads and stores
// derive only from workgroup_id, subgroup_id, uniforms and loop counters (Dawn requires them
// uniform within a subgroup).
enable f16;
enable chromium_experimental_subgroup_matrix;
// Loop bounds and matrix offsets are uniform per subgroup by construction (subgroup_id,
// uniforms); the analysis is off, as in llama.cpp's WebGPU kernels, in case it cannot prove it.
diagnostic(off, chromium.subgroup_matrix_uniformity);

struct Params { M: u32, N: u32, K: u32, _a: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> xh: array<f16>;
#if WSTAGE
@group(0) @binding(2) var<storage, read> wv: array<vec4<u32>>;  // W as 16-byte words (8 halves)
#else
@group(0) @binding(2) var<storage, read> w: array<f16>;
#endif
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#if BIAS
@group(0) @binding(5) var<storage, read> bias: array<f32>;
#endif

/* Lanes per subgroup (the device's fixed subgroup size). */
override SG: u32 = 32u;
/* Subgroups per workgroup, each a 1/SPLIT share of K. */
override SPLIT: u32 = 8u;
#if KFIX
/* K as a pipeline constant (KFIX; then p.K must equal it): the driver then sees every
   tile's rows 32-byte aligned and its loads' strides, which a uniform hides. */
override KF: u32 = 4096u;
#endif
#if SWIGLU
const PARTS: u32 = 2u;   // gate, up
#else
const PARTS: u32 = 1u;
#endif
#if COLS2
const COLS: u32 = 32u;
#else
#if COLS4
const COLS: u32 = 64u;   // COLS4 (not with SWIGLU): four output tiles, each left tile serving four right ones
#else
const COLS: u32 = 16u;
#endif
#endif
override CS_SIZE: u32 = SPLIT * PARTS * 256u;
#if WSTAGE
// WSTAGE: each subgroup copies its right tiles of one step of K through workgroup memory with
// one 16-byte load per lane and tile (the matrix loads then read workgroup memory), the next
// step's loads in flight while this one multiplies. Needs uniform trip counts: one step of
// K per subgroup and iteration, a barrier after the copy and after the multiplies.
#if R4
const RT: u32 = 4u;
#else
#if R2
const RT: u32 = 2u;
#else
const RT: u32 = 1u;
#endif
#endif
override WS_SIZE: u32 = SPLIT * RT * 256u;
var<workgroup> ws: array<f16, WS_SIZE>;  // (subgroup, right tile, 16 columns n, 16 k) f16

// Copies a 16-byte word of W (8 halves of row n, from k = 8h) to its place in tile r of the stage at b.
fn stage(b: u32, r: u32, n: u32, h: u32, v: vec4<u32>) {
  let o = b + r * 256u + n * 16u + h * 8u;
  let e0 = unpack2x16float(v.x);
  let e1 = unpack2x16float(v.y);
  let e2 = unpack2x16float(v.z);
  let e3 = unpack2x16float(v.w);
  ws[o] = f16(e0.x);
  ws[o + 1u] = f16(e0.y);
  ws[o + 2u] = f16(e1.x);
  ws[o + 3u] = f16(e1.y);
  ws[o + 4u] = f16(e2.x);
  ws[o + 5u] = f16(e2.y);
  ws[o + 6u] = f16(e3.x);
  ws[o + 7u] = f16(e3.y);
}
#endif
var<workgroup> cs: array<f32, CS_SIZE>;  // (subgroup, part, 16, 16) partial sums of one output tile

// Sums the SPLIT partial tiles in cs and writes output rows m0.., columns j.. (SWIGLU: of the
// pairs gate j.., up N/2 + j..), with the bias, SwiGLU and the residual.
fn finish(lid: u32, m0: u32, j: u32) {
  for (var e = lid; e < 256u; e = e + SPLIT * SG) {
    let m = m0 + e / 16u;
    let n = j + e % 16u;
    var v = 0.0;
    for (var s = 0u; s < SPLIT; s = s + 1u) { v = v + cs[s * PARTS * 256u + e]; }
#if SWIGLU
    var u = 0.0;
    for (var s = 0u; s < SPLIT; s = s + 1u) { u = u + cs[s * PARTS * 256u + 256u + e]; }
#if BIAS
    v = v + bias[n];
    u = u + bias[p.N / 2u + n];
#endif
    let out = v / (1.0 + exp(-v)) * u;
    let idx = m * (p.N / 2u) + n;
#else
#if BIAS
    v = v + bias[n];
#endif
    let out = v;
    let idx = m * p.N + n;
#endif
    if (m < p.M) {
#if ACC
      y[idx] = y[idx] + out;
#else
      y[idx] = out;
#endif
    }
  }
}

@compute @workgroup_size(SPLIT * SG)
fn main(
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(subgroup_id) sg: u32,
  @builtin(subgroup_invocation_id) lane: u32,
) {
#if KFIX
  let K = KF;
#else
  let K = p.K;
#endif
  let j0 = wid.x * COLS;          // first output column
  let m0 = wid.z * 16u;
  let steps = K / 16u;
  let xo = m0 * K;
  // Right tiles' first rows of W: (gate j0, up N/2 + j0) with SWIGLU, then the same + 16 with
  // COLS2; COLS4: j0, j0 + 16, j0 + 32, j0 + 48.
#if SWIGLU
  let o0 = j0 * K;
  let o1 = (p.N / 2u + j0) * K;
#else
  let o0 = j0 * K;
  let o1 = (j0 + 16u) * K;
#endif
#if COLS4
  let o2 = o0 + 32u * K;
  let o3 = o0 + 48u * K;
#else
  let o2 = o0 + 16u * K;
  let o3 = o1 + 16u * K;
#endif
  var c0 = subgroup_matrix_result<f32, 16, 16>();
#if R2
  var c1 = subgroup_matrix_result<f32, 16, 16>();
#endif
#if R4
  var c2 = subgroup_matrix_result<f32, 16, 16>();
  var c3 = subgroup_matrix_result<f32, 16, 16>();
#endif
#if WSTAGE
  let kw = K / 8u;                // 16-byte words per row of W
  var rows = array<u32, 4>(o0 / K, o1 / K, o2 / K, o3 / K);
  let sb = sg * RT * 256u;        // this subgroup's stage
  let n = lane / 2u;
  let h = lane % 2u;
  var nxt: array<vec4<u32>, 4>;
  if (sg < steps) {
    for (var r = 0u; r < RT; r = r + 1u) { nxt[r] = wv[(rows[r] + n) * kw + sg * 2u + h]; }
  }
  let iters = (steps + SPLIT - 1u) / SPLIT;
  for (var i = 0u; i < iters; i = i + 1u) {
    let t = i * SPLIT + sg;
    if (t < steps) {
      for (var r = 0u; r < RT; r = r + 1u) { stage(sb, r, n, h, nxt[r]); }
    }
    workgroupBarrier();
    if (t + SPLIT < steps) {
      for (var r = 0u; r < RT; r = r + 1u) { nxt[r] = wv[(rows[r] + n) * kw + (t + SPLIT) * 2u + h]; }
    }
    if (t < steps) {
      let a0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&xh, xo + t * 16u, K);
      let b00 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&ws, sb, 16u);
      c0 = subgroupMatrixMultiplyAccumulate(a0, b00, c0);
#if R2
      let b10 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&ws, sb + 256u, 16u);
      c1 = subgroupMatrixMultiplyAccumulate(a0, b10, c1);
#endif
#if R4
      let b20 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&ws, sb + 512u, 16u);
      c2 = subgroupMatrixMultiplyAccumulate(a0, b20, c2);
      let b30 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&ws, sb + 768u, 16u);
      c3 = subgroupMatrixMultiplyAccumulate(a0, b30, c3);
#endif
    }
    workgroupBarrier();
  }
#else
  var t = sg;
  // Four steps of K at a time: their loads are independent of the accumulation chains.
  for (; t + 3u * SPLIT < steps; t = t + 4u * SPLIT) {
    let k0 = (t + 0u * SPLIT) * 16u;
    let k1 = (t + 1u * SPLIT) * 16u;
    let k2 = (t + 2u * SPLIT) * 16u;
    let k3 = (t + 3u * SPLIT) * 16u;
    let a0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&xh, xo + k0, K);
    let a1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&xh, xo + k1, K);
    let a2 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&xh, xo + k2, K);
    let a3 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&xh, xo + k3, K);
    let b00 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, o0 + k0, K);
    let b01 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, o0 + k1, K);
    let b02 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, o0 + k2, K);
    let b03 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, o0 + k3, K);
#if R2
    let b10 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, o1 + k0, K);
    let b11 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, o1 + k1, K);
    let b12 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, o1 + k2, K);
    let b13 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, o1 + k3, K);
#endif
#if R4
    let b20 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, o2 + k0, K);
    let b21 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, o2 + k1, K);
    let b22 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, o2 + k2, K);
    let b23 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, o2 + k3, K);
    let b30 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, o3 + k0, K);
    let b31 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, o3 + k1, K);
    let b32 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, o3 + k2, K);
    let b33 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, o3 + k3, K);
#endif
    c0 = subgroupMatrixMultiplyAccumulate(a0, b00, c0);
    c0 = subgroupMatrixMultiplyAccumulate(a1, b01, c0);
    c0 = subgroupMatrixMultiplyAccumulate(a2, b02, c0);
    c0 = subgroupMatrixMultiplyAccumulate(a3, b03, c0);
#if R2
    c1 = subgroupMatrixMultiplyAccumulate(a0, b10, c1);
    c1 = subgroupMatrixMultiplyAccumulate(a1, b11, c1);
    c1 = subgroupMatrixMultiplyAccumulate(a2, b12, c1);
    c1 = subgroupMatrixMultiplyAccumulate(a3, b13, c1);
#endif
#if R4
    c2 = subgroupMatrixMultiplyAccumulate(a0, b20, c2);
    c2 = subgroupMatrixMultiplyAccumulate(a1, b21, c2);
    c2 = subgroupMatrixMultiplyAccumulate(a2, b22, c2);
    c2 = subgroupMatrixMultiplyAccumulate(a3, b23, c2);
    c3 = subgroupMatrixMultiplyAccumulate(a0, b30, c3);
    c3 = subgroupMatrixMultiplyAccumulate(a1, b31, c3);
    c3 = subgroupMatrixMultiplyAccumulate(a2, b32, c3);
    c3 = subgroupMatrixMultiplyAccumulate(a3, b33, c3);
#endif
  }
  for (; t < steps; t = t + SPLIT) {
    let k0 = t * 16u;
    let a0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&xh, xo + k0, K);
    let b00 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, o0 + k0, K);
    c0 = subgroupMatrixMultiplyAccumulate(a0, b00, c0);
#if R2
    let b10 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, o1 + k0, K);
    c1 = subgroupMatrixMultiplyAccumulate(a0, b10, c1);
#endif
#if R4
    let b20 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, o2 + k0, K);
    c2 = subgroupMatrixMultiplyAccumulate(a0, b20, c2);
    let b30 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&w, o3 + k0, K);
    c3 = subgroupMatrixMultiplyAccumulate(a0, b30, c3);
#endif
  }
#endif
  // Epilogue, one output tile at a time: (c0), or (c0, c1) as (gate, up); COLS2: then (c1), or (c2, c3).
  let at = sg * PARTS * 256u;
  subgroupMatrixStore<row_major>(&cs, at, c0, 16u);
#if SWIGLU
  subgroupMatrixStore<row_major>(&cs, at + 256u, c1, 16u);
#endif
  workgroupBarrier();
  finish(lid, m0, j0);
#if COLS2
  workgroupBarrier();
#if SWIGLU
  subgroupMatrixStore<row_major>(&cs, at, c2, 16u);
  subgroupMatrixStore<row_major>(&cs, at + 256u, c3, 16u);
#else
  subgroupMatrixStore<row_major>(&cs, at, c1, 16u);
#endif
  workgroupBarrier();
  finish(lid, m0, j0 + 16u);
#endif
#if COLS4
  workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, c1, 16u);
  workgroupBarrier();
  finish(lid, m0, j0 + 16u);
  workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, c2, 16u);
  workgroupBarrier();
  finish(lid, m0, j0 + 32u);
  workgroupBarrier();
  subgroupMatrixStore<row_major>(&cs, at, c3, 16u);
  workgroupBarrier();
  finish(lid, m0, j0 + 48u);
#endif
}
