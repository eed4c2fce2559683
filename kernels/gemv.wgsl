// Matrix-vector product for decode: y[m, n] (+)= sum_k W[n, k] * x'[m, k] (+ bias[n]),
// shapes and fused variants in lib/gemv_io.wgsl. The portable variant (gemv_sg.wgsl needs
// subgroups).
// One workgroup computes ROWS consecutive rows for one m: every thread strides over K, so
// each weight byte is read once, with ROWS independent 16-byte loads in flight per step.
#include lib/gemv_io.wgsl

override WG: u32 = 256;
override ROWS: u32 = 4;
const MAX_ROWS: u32 = 8u;

var<workgroup> red: array<f32, WG * ROWS>;

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
    let xs = load_x(xbase, i, scale);
    for (var r = 0u; r < ROWS; r = r + 1u) {
      let row = min(row0 + r, p.N - 1u);
      acc[r] = acc[r] + dot8(w[phys(row) * kv + i], xs[0], xs[1]);
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
  if (lid < ROWS / 2u && row0 + 2u * lid + 1u < p.N) {
    finish(m, row0 + 2u * lid, total(2u * lid, nparts), total(2u * lid + 1u, nparts));
  }
#else
  if (lid < ROWS && row0 + lid < p.N) {
    finish(m, row0 + lid, total(lid, nparts), 0.0);
  }
#endif
}
