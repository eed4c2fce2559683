// Batched decode's projections for a few rows (the batch, 1..16 per pass) on the plain ALUs:
// y[m, n] (+)= sum_k xh[m, k] * W[n, k] (+ bias), reading every weight once per MR rows at
// GEMV speed. Decode at B <= 16 is bound by weight bandwidth, so the kernel is a GEMV that
// carries MR rows: a team (a subgroup; without SUBGROUPS the whole workgroup) owns R rows of
// W, its lanes stride over K with 16-byte loads (8 halves) of every row, UNROLL of them in
// flight, and each weight word meets the matching words of all MR rows of xh (read from
// global memory: the MR rows, a few KiB per step of K, stay in L1 for all the teams of an
// SM). Each lane keeps R x MR partial sums in registers; one reduction over the lanes per
// pass (subgroupAdd, or workgroup memory) then the epilogue. The other skinny path
// (gemm_skinny.wgsl, the matrix units) loads W as 16x16 tiles, which streamed it at ~1 TB/s
// on an H100 against the GEMVs' ~2.4.
//   xh: (rows, K) f16 as 16-byte words (half_rows.wgsl: x rounded, RMSNorm applied), rows a
//       multiple of MR (padding rows zero);  W: (N, K) f16 as stored, K a multiple of 8;
//   y: (M, N) f32, or with SWIGLU (M, N/2) = silu(gate) * up where W = [gate; up] (rows
//   [0, N/2) and [N/2, N)); ACC adds into y (the residual); BIAS adds bias[n] (SWIGLU: to
//   gate and up before the activation).
// X32: xh holds x' as f32, not rounded (half_rows.wgsl's F32), two 16-byte loads per 8 halves
// of W instead of one plus 8 conversions (f32 FMAs only).
// F16: each 8-term piece of a dot product is multiplied and summed in f16 (packed halves),
// then added to the f32 sum: fewer instructions per weight than f32 FMAs plus conversions,
// which is what limits 16 rows a pass; the pieces are rounded to f16 (about 5e-4 of a piece).
// A workgroup owns CPW consecutive outputs (SWIGLU: gate/up pairs); its teams take groups of
// OUTS = R / PARTS outputs in turn, so any subgroup size covers them; workgroup z takes rows
// z * MR .. z * MR + MR - 1 of xh. Loops over R, MR and UNROLL have pipeline-constant bounds
// so that the driver unrolls them and keeps the sums in registers.
#if F16
enable f16;
#endif
#if SUBGROUPS
// A team's loop bounds derive from the subgroup's id and size, uniform per subgroup, which
// WGSL's analysis cannot see.
diagnostic(off, subgroup_uniformity);
#endif

struct Params { M: u32, N: u32, K: u32, _a: u32 }
@group(0) @binding(0) var<uniform> p: Params;
#if X32
@group(0) @binding(1) var<storage, read> xh: array<vec4<f32>>;   // (rows, K) as f32 (half_rows' F32)
#else
@group(0) @binding(1) var<storage, read> xh: array<vec4<u32>>;
#endif
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#if BIAS
@group(0) @binding(5) var<storage, read> bias: array<f32>;
#endif

override WG: u32 = 128u;     // threads a workgroup
override R: u32 = 4u;        // rows of W a team pass (SWIGLU: R/2 gate rows, then their R/2 up rows)
override MR: u32 = 16u;      // rows of xh a workgroup (z), 1..MAX_MR
override UNROLL: u32 = 2u;   // steps of K whose weight loads are in flight together
override CPW: u32 = 16u;     // outputs a workgroup, a multiple of R / PARTS
const MAX_R: u32 = 8u;
const MAX_MR: u32 = 16u;
const MAX_UNROLL: u32 = 4u;
#if SWIGLU
const PARTS: u32 = 2u;
#else
const PARTS: u32 = 1u;
#endif

#if !SUBGROUPS
// The team's sums over its lanes, MR slots at a time: (slot, lane), then the totals.
var<workgroup> red: array<f32, WG * MAX_MR>;
var<workgroup> totals: array<f32, MAX_R * MAX_MR>;
#endif

#if F16
// sum over 8 terms of w * x, the products and their sum in f16 (two packed lanes), the total in f32.
fn dot8(wv: vec4<u32>, xv: vec4<u32>) -> f32 {
  let s = bitcast<vec4<f16>>(wv.xy) * bitcast<vec4<f16>>(xv.xy) + bitcast<vec4<f16>>(wv.zw) * bitcast<vec4<f16>>(xv.zw);
  let t = s.xy + s.zw;
  return f32(t.x) + f32(t.y);
}
#endif

// Output j (of N, or of N/2 with SWIGLU) from its row sums g (and u, the up row).
fn finish(m: u32, j: u32, g: f32, u: f32) {
#if SWIGLU
  var a = g;
  var b = u;
#if BIAS
  a = a + bias[j];
  b = b + bias[p.N / 2u + j];
#endif
  let out = a / (1.0 + exp(-a)) * b;
  let idx = m * (p.N / 2u) + j;
#else
  var out = g;
#if BIAS
  out = out + bias[j];
#endif
  let idx = m * p.N + j;
#endif
#if ACC
  y[idx] = y[idx] + out;
#else
  y[idx] = out;
#endif
}

@compute @workgroup_size(WG)
fn main(
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3<u32>,
#if SUBGROUPS
  @builtin(subgroup_invocation_id) sgi: u32,
  @builtin(subgroup_size) sgs: u32,
#endif
) {
#if SUBGROUPS
  let lane = sgi;
  let lanes = sgs;
  let team = lid / sgs;
  let teams = WG / sgs;
#else
  let lane = lid;
  let lanes = WG;
  let team = 0u;
  let teams = 1u;
#endif
  let outs_all = p.N / PARTS;
  let half = p.N / PARTS;              // SWIGLU: where the up rows begin
  let kv = p.K / 8u;                   // words a row
  let first = wid.x * CPW;
  let m0 = wid.z * MR;
  let xbase = m0 * kv;
  let OUTS = R / PARTS;
  let last = min(first + CPW, outs_all);
  for (var j0 = first + team * OUTS; j0 < last; j0 = j0 + teams * OUTS) {
    // Word offsets of the team's rows of W (outputs past the end read the last row again).
    var rowoff: array<u32, MAX_R>;
    for (var r = 0u; r < R; r = r + 1u) {
      let j = min(j0 + r % OUTS, outs_all - 1u);
      rowoff[r] = (j + (r / OUTS) * half) * kv;
    }
    var acc: array<f32, MAX_R * MAX_MR>;   // slot r * MAX_MR + m; zero (WGSL initializes it)
    var i = lane;
    for (; i + (UNROLL - 1u) * lanes < kv; i = i + UNROLL * lanes) {
      var wv: array<vec4<u32>, MAX_UNROLL * MAX_R>;
      for (var u = 0u; u < UNROLL; u = u + 1u) {
        for (var r = 0u; r < R; r = r + 1u) { wv[u * MAX_R + r] = w[rowoff[r] + i + u * lanes]; }
      }
      for (var u = 0u; u < UNROLL; u = u + 1u) {
#if !F16
        var wf: array<vec4<f32>, 2u * MAX_R>;
        for (var r = 0u; r < R; r = r + 1u) {
          let v = wv[u * MAX_R + r];
          wf[2u * r] = vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y));
          wf[2u * r + 1u] = vec4<f32>(unpack2x16float(v.z), unpack2x16float(v.w));
        }
#endif
        for (var m = 0u; m < MR; m = m + 1u) {
#if X32
          let xa = xh[2u * (xbase + m * kv + i + u * lanes)];
          let xb = xh[2u * (xbase + m * kv + i + u * lanes) + 1u];
#else
          let xv = xh[xbase + m * kv + i + u * lanes];
#endif
#if F16
          for (var r = 0u; r < R; r = r + 1u) { acc[r * MAX_MR + m] = acc[r * MAX_MR + m] + dot8(wv[u * MAX_R + r], xv); }
#else
#if !X32
          let xa = vec4<f32>(unpack2x16float(xv.x), unpack2x16float(xv.y));
          let xb = vec4<f32>(unpack2x16float(xv.z), unpack2x16float(xv.w));
#endif
          for (var r = 0u; r < R; r = r + 1u) {
            let a = wf[2u * r];
            let b = wf[2u * r + 1u];
            var s = acc[r * MAX_MR + m];
            s = fma(a.x, xa.x, s);
            s = fma(a.y, xa.y, s);
            s = fma(a.z, xa.z, s);
            s = fma(a.w, xa.w, s);
            s = fma(b.x, xb.x, s);
            s = fma(b.y, xb.y, s);
            s = fma(b.z, xb.z, s);
            s = fma(b.w, xb.w, s);
            acc[r * MAX_MR + m] = s;
          }
#endif
        }
      }
    }
    // The steps of K left (fewer than UNROLL per lane), one at a time.
    for (; i < kv; i = i + lanes) {
      for (var m = 0u; m < MR; m = m + 1u) {
#if X32
        let xa = xh[2u * (xbase + m * kv + i)];
        let xb = xh[2u * (xbase + m * kv + i) + 1u];
#else
        let xv = xh[xbase + m * kv + i];
#endif
        for (var r = 0u; r < R; r = r + 1u) {
          let v = w[rowoff[r] + i];
#if F16
          acc[r * MAX_MR + m] = acc[r * MAX_MR + m] + dot8(v, xv);
#else
#if !X32
          let xa = vec4<f32>(unpack2x16float(xv.x), unpack2x16float(xv.y));
          let xb = vec4<f32>(unpack2x16float(xv.z), unpack2x16float(xv.w));
#endif
          acc[r * MAX_MR + m] = acc[r * MAX_MR + m]
            + dot(vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y)), xa)
            + dot(vec4<f32>(unpack2x16float(v.z), unpack2x16float(v.w)), xb);
#endif
        }
      }
    }
#if SUBGROUPS
    // Every lane gets each total (subgroupAdd, in uniform control flow); lane 0 writes them.
    for (var o = 0u; o < OUTS; o = o + 1u) {
      for (var m = 0u; m < MR; m = m + 1u) {
        let g = subgroupAdd(acc[o * MAX_MR + m]);
#if SWIGLU
        let u = subgroupAdd(acc[(o + OUTS) * MAX_MR + m]);
#else
        let u = 0.0;
#endif
        if (lane == 0u && j0 + o < outs_all && m0 + m < p.M) { finish(m0 + m, j0 + o, g, u); }
      }
    }
#else
    // Reduced MR slots at a time (one row of W for every row of xh) through workgroup memory.
    for (var r = 0u; r < R; r = r + 1u) {
      for (var m = 0u; m < MR; m = m + 1u) { red[m * WG + lid] = acc[r * MAX_MR + m]; }
      for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (lid < stride) {
          for (var m = 0u; m < MR; m = m + 1u) { red[m * WG + lid] = red[m * WG + lid] + red[m * WG + lid + stride]; }
        }
      }
      workgroupBarrier();
      if (lid < MR) { totals[r * MR + lid] = red[lid * WG]; }
      workgroupBarrier();
    }
    // Thread t writes output t / MR for row t % MR.
    let o = lid / MR;
    let m = lid % MR;
    if (o < OUTS && j0 + o < outs_all && m0 + m < p.M) {
#if SWIGLU
      finish(m0 + m, j0 + o, totals[o * MR + m], totals[(o + OUTS) * MR + m]);
#else
      finish(m0 + m, j0 + o, totals[o * MR + m], 0.0);
#endif
    }
    workgroupBarrier();
#endif
  }
}
