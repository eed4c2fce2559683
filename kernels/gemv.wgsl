// Matrix-vector product for decode: y[m, n] (+)= sum_k W[n, k] * x'[m, k] (+ bias[n]).
//   W:     (N, K) f16, packed two halves per u32, read as vec4<u32> (8 halves); K % 8 == 0
//   x:     (M, K) f32, read as vec4<f32>
//   x':    x, or with NORM: x * rsqrt(mean(x^2) + eps) * gamma   (RMSNorm fused in)
//   y:     (M, N) f32; with ACC y += (the residual add fused in); with SWIGLU the rows come
//          in (gate, up) pairs (see phys) and y is (M, N/2) = silu(gate) * up
// One workgroup computes ROWS consecutive rows for one m: every thread strides over K, so
// each weight byte is read once, with ROWS independent 16-byte loads in flight per step.
struct Params {
  N: u32,        // rows of W
  K: u32,        // columns of W
  eps: f32,      // RMSNorm epsilon (NORM)
  groups_x: u32, // workgroups along x (row groups are split over x and y past 65535)
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

override WG: u32 = 256;
override ROWS: u32 = 4;
const MAX_ROWS: u32 = 8u;

var<workgroup> red: array<f32, WG * ROWS>;

// With SWIGLU, W is cat(gate, up) (rows [0, N/2) and [N/2, N)) and logical row L is
// gate row L/2 when L is even, up row L/2 when odd, so (gate_j, up_j) are adjacent.
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

// Sums v over the workgroup for slot r (0 <= r < ROWS); the result is valid in red[r * WG].
fn reduce_slot(lid: u32, r: u32) {
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    workgroupBarrier();
    if (lid < stride) {
      red[r * WG + lid] = red[r * WG + lid] + red[r * WG + lid + stride];
    }
  }
  workgroupBarrier();
}

fn total(r: u32, nparts: u32) -> f32 {
  var s = 0.0;
  for (var j = 0u; j < nparts; j = j + 1u) { s = s + red[r * WG + j]; }
  return s;
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32,
#if SUBGROUPS
        @builtin(subgroup_invocation_id) sgi: u32,
        @builtin(subgroup_size) sgs: u32,
#endif
        @builtin(workgroup_id) wid: vec3<u32>) {
  let group = wid.y * p.groups_x + wid.x;
  let row0 = group * ROWS;
  if (row0 >= p.N) { return; }   // uniform per workgroup
  let m = wid.z;
  let kv = p.K / 8u;              // vec4<u32> per row
  let xbase = m * (p.K / 4u);

  var scale = 1.0;
#if NORM
  var ss = 0.0;
  for (var i = lid; i < p.K / 4u; i = i + WG) {
    let v = x[xbase + i];
    ss = ss + dot(v, v);
  }
  red[lid] = ss;
  reduce_slot(lid, 0u);
  scale = inverseSqrt(red[0] / f32(p.K) + p.eps);
  workgroupBarrier();
#endif

  var acc: array<f32, MAX_ROWS>;
  for (var r = 0u; r < MAX_ROWS; r = r + 1u) { acc[r] = 0.0; }
  for (var i = lid; i < kv; i = i + WG) {
    var xa = x[xbase + 2u * i];
    var xb = x[xbase + 2u * i + 1u];
#if NORM
    let g = gamma[i];
    xa = xa * vec4<f32>(unpack2x16float(g.x), unpack2x16float(g.y)) * scale;
    xb = xb * vec4<f32>(unpack2x16float(g.z), unpack2x16float(g.w)) * scale;
#endif
    for (var r = 0u; r < ROWS; r = r + 1u) {
      let row = min(row0 + r, p.N - 1u);
      acc[r] = acc[r] + dot8(w[phys(row) * kv + i], xa, xb);
    }
  }

  // Per-row totals: red[r * WG + j] for j < nparts hold partial sums of row r.
#if SUBGROUPS
  for (var r = 0u; r < ROWS; r = r + 1u) {
    let s = subgroupAdd(acc[r]);
    if (sgi == 0u) { red[r * WG + lid / sgs] = s; }
  }
  workgroupBarrier();
  let nparts = WG / sgs;
#else
  for (var r = 0u; r < ROWS; r = r + 1u) { red[r * WG + lid] = acc[r]; }
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    workgroupBarrier();
    if (lid < stride) {
      for (var r = 0u; r < ROWS; r = r + 1u) {
        red[r * WG + lid] = red[r * WG + lid] + red[r * WG + lid + stride];
      }
    }
  }
  workgroupBarrier();
  let nparts = 1u;
#endif

#if SWIGLU
  // rows (2j, 2j+1) are (gate_j, up_j); ROWS is even and N is even.
  if (lid < ROWS / 2u) {
    let row = row0 + 2u * lid;
    if (row + 1u < p.N) {
      var g = total(2u * lid, nparts);
      var u = total(2u * lid + 1u, nparts);
#if BIAS
      g = g + bias[phys(row)];
      u = u + bias[phys(row + 1u)];
#endif
      let out = g / (1.0 + exp(-g)) * u;
      let idx = m * (p.N / 2u) + row / 2u;
#if ACC
      y[idx] = y[idx] + out;
#else
      y[idx] = out;
#endif
    }
  }
#else
  if (lid < ROWS) {
    let row = row0 + lid;
    if (row < p.N) {
      var out = total(lid, nparts);
#if BIAS
      out = out + bias[row];
#endif
      let idx = m * p.N + row;
#if ACC
      y[idx] = y[idx] + out;
#else
      y[idx] = out;
#endif
    }
  }
#endif
}
