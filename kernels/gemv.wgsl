// Matrix-vector product for decode: y[m, n] (+)= sum_k W[n, k] * x'[m, k] (+ bias[n]),
// shapes and fused variants in lib/gemv_io.wgsl. The portable variant (gemv_sg.wgsl needs
// subgroups).
// One workgroup computes ROWS consecutive rows for one m: every thread strides over K, so
// each weight byte is read once, with ROWS independent 16-byte loads in flight per step.
#include lib/gemv_io.wgsl

override WG: u32 = 256;
override ROWS: u32 = 4;
const MAX_ROWS: u32 = 8u;

// Partial sums: slot r < ROWS for row r, slot ROWS for the squares of x (NORM). The slot
// count is a constant (not a `let`) so that the loops over slots unroll and `acc` stays in
// registers: run 26 measured the NORM GEMVs ~20 % slower with a `let` bound.
#if NORM
const NORM_SLOTS: u32 = 1u;
#else
const NORM_SLOTS: u32 = 0u;
#endif
var<workgroup> red: array<f32, WG * (ROWS + 1u)>;

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

  var acc: array<f32, MAX_ROWS + 1u>;
  for (var r = 0u; r <= MAX_ROWS; r = r + 1u) { acc[r] = 0.0; }
  var ss = 0.0;
  for (var i = lid; i < kv; i = i + WG) {
    let xs = load_x(xbase, i, &ss);
    for (var r = 0u; r < ROWS; r = r + 1u) {
      let row = min(row0 + r, p.N - 1u);
      acc[r] = acc[r] + dot8(w[phys(row) * kv + i], xs[0], xs[1]);
    }
  }
#if NORM
  acc[ROWS] = ss;
#endif

  // Per-slot totals: red[r * WG + j] for j < nparts hold partial sums of slot r.
#if SUBGROUPS
  for (var r = 0u; r < ROWS + NORM_SLOTS; r = r + 1u) {
    let s = subgroupAdd(acc[r]);
    if (sgi == 0u) { red[r * WG + lid / sgs] = s; }
  }
  workgroupBarrier();
  let nparts = WG / sgs;
#else
  for (var r = 0u; r < ROWS + NORM_SLOTS; r = r + 1u) { red[r * WG + lid] = acc[r]; }
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    workgroupBarrier();
    if (lid < stride) {
      for (var r = 0u; r < ROWS + NORM_SLOTS; r = r + 1u) {
        red[r * WG + lid] = red[r * WG + lid] + red[r * WG + lid + stride];
      }
    }
  }
  workgroupBarrier();
  let nparts = 1u;
#endif
#if NORM
  let scale = norm_scale(total(ROWS, nparts));
#else
  let scale = 1.0;
#endif

#if ROPE
  // ROWS is a multiple of 4 and N of D: quads are whole.
  if (lid < ROWS / 4u && row0 + 4u * lid < p.N) {
    let r = 4u * lid;
    finish_rope(m, row0 + r, total(r, nparts) * scale, total(r + 1u, nparts) * scale,
                total(r + 2u, nparts) * scale, total(r + 3u, nparts) * scale);
  }
#else
#if SWIGLU
  // rows (2j, 2j+1) are (gate_j, up_j); ROWS is even and N is even.
  if (lid < ROWS / 2u && row0 + 2u * lid + 1u < p.N) {
    finish(m, row0 + 2u * lid, total(2u * lid, nparts) * scale, total(2u * lid + 1u, nparts) * scale);
  }
#else
  if (lid < ROWS && row0 + lid < p.N) {
    finish(m, row0 + lid, total(lid, nparts) * scale, 0.0);
  }
#endif
#endif
}
