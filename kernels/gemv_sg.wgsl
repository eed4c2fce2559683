// Matrix-vector product for decode, one subgroup per group of ROWS rows (devices with
// subgroups; gemv.wgsl is the portable variant). Same contract as gemv.wgsl:
//   y[m, n] (+)= sum_k W[n, k] * x'[m, k] (+ bias[n]);  W: (N, K) f16 packed, K % 8 == 0;
//   x: (M, K) f32;  NORM: x' = RMSNorm(x) * gamma;  ACC: y +=;  SWIGLU: y = silu(gate) * up
// A workgroup owns RPW consecutive rows; its subgroups take groups of ROWS rows in turn, so
// any subgroup size covers them. Lanes stride over K with UNROLL loads in flight per row,
// and each row's sum is one subgroupAdd: no workgroup barrier outside the NORM prologue.
// A subgroup's row loop depends on lid / subgroup_size, uniform per subgroup, which WGSL's
// analysis cannot see.
diagnostic(off, subgroup_uniformity);

struct Params {
  N: u32,
  K: u32,
  eps: f32,
  groups_x: u32,
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

override WG: u32 = 128;
override ROWS: u32 = 2;   // rows per subgroup pass (even with SWIGLU)
override RPW: u32 = 8;    // rows per workgroup, a multiple of ROWS
const MAX_ROWS: u32 = 8u;
const UNROLL: u32 = 4u;

var<workgroup> red: array<f32, WG>;

fn phys(row: u32) -> u32 {
#if SWIGLU
  return select(row / 2u, p.N / 2u + row / 2u, (row & 1u) == 1u);
#else
  return row;
#endif
}

fn dot8(wv: vec4<u32>, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
  return dot(unpack2x16float(wv.x), xa.xy) + dot(unpack2x16float(wv.y), xa.zw)
       + dot(unpack2x16float(wv.z), xb.xy) + dot(unpack2x16float(wv.w), xb.zw);
}

fn load_x(xbase: u32, i: u32, scale: f32) -> array<vec4<f32>, 2> {
  var xa = x[xbase + 2u * i];
  var xb = x[xbase + 2u * i + 1u];
#if NORM
  let g = gamma[i];
  xa = xa * vec4<f32>(unpack2x16float(g.x), unpack2x16float(g.y)) * scale;
  xb = xb * vec4<f32>(unpack2x16float(g.z), unpack2x16float(g.w)) * scale;
#endif
  return array<vec4<f32>, 2>(xa, xb);
}

fn store(m: u32, row: u32, v: f32) {
  let idx = m * p.N + row;
#if ACC
  y[idx] = y[idx] + v;
#else
  y[idx] = v;
#endif
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_invocation_id) sgi: u32,
        @builtin(subgroup_size) sgs: u32,
        @builtin(workgroup_id) wid: vec3<u32>) {
  let m = wid.z;
  let kv = p.K / 8u;
  let xbase = m * (p.K / 4u);
  let first = (wid.y * p.groups_x + wid.x) * RPW;
  if (first >= p.N) { return; }   // uniform per workgroup

  var scale = 1.0;
#if NORM
  var ss = 0.0;
  for (var i = lid; i < p.K / 4u; i = i + WG) {
    let v = x[xbase + i];
    ss = ss + dot(v, v);
  }
  ss = subgroupAdd(ss);
  if (sgi == 0u) { red[lid / sgs] = ss; }
  workgroupBarrier();
  var total = 0.0;
  for (var j = 0u; j < WG / sgs; j = j + 1u) { total = total + red[j]; }
  scale = inverseSqrt(total / f32(p.K) + p.eps);
#endif

  let sg = lid / sgs;
  let nsg = WG / sgs;
  for (var r0 = first + sg * ROWS; r0 < min(first + RPW, p.N); r0 = r0 + nsg * ROWS) {
    var acc: array<f32, MAX_ROWS>;
    var rowoff: array<u32, MAX_ROWS>;
    for (var r = 0u; r < MAX_ROWS; r = r + 1u) {
      acc[r] = 0.0;
      rowoff[r] = phys(min(r0 + r, p.N - 1u)) * kv;
    }
    var i = sgi;
    for (; i + (UNROLL - 1u) * sgs < kv; i = i + UNROLL * sgs) {
      var wv: array<vec4<u32>, UNROLL * MAX_ROWS>;
      for (var u = 0u; u < UNROLL; u = u + 1u) {
        for (var r = 0u; r < ROWS; r = r + 1u) { wv[u * MAX_ROWS + r] = w[rowoff[r] + i + u * sgs]; }
      }
      for (var u = 0u; u < UNROLL; u = u + 1u) {
        let xs = load_x(xbase, i + u * sgs, scale);
        for (var r = 0u; r < ROWS; r = r + 1u) { acc[r] = acc[r] + dot8(wv[u * MAX_ROWS + r], xs[0], xs[1]); }
      }
    }
    for (; i < kv; i = i + sgs) {
      let xs = load_x(xbase, i, scale);
      for (var r = 0u; r < ROWS; r = r + 1u) { acc[r] = acc[r] + dot8(w[rowoff[r] + i], xs[0], xs[1]); }
    }
    for (var r = 0u; r < ROWS; r = r + 1u) { acc[r] = subgroupAdd(acc[r]); }
    if (sgi == 0u) {
#if SWIGLU
      for (var r = 0u; r + 1u < ROWS; r = r + 2u) {
        let row = r0 + r;
        if (row + 1u < p.N) {
          var g = acc[r];
          var u = acc[r + 1u];
#if BIAS
          g = g + bias[phys(row)];
          u = u + bias[phys(row + 1u)];
#endif
          let idx = m * (p.N / 2u) + row / 2u;
          let out = g / (1.0 + exp(-g)) * u;
#if ACC
          y[idx] = y[idx] + out;
#else
          y[idx] = out;
#endif
        }
      }
#else
      for (var r = 0u; r < ROWS; r = r + 1u) {
        let row = r0 + r;
        if (row < p.N) {
          var out = acc[r];
#if BIAS
          out = out + bias[row];
#endif
          store(m, row, out);
        }
      }
#endif
    }
  }
}
