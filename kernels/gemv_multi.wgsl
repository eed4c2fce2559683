// Matrix times a few vectors for batched decode (gemv_multi): y[m, n] (+)= sum_k W[n, k] * x'[m, k] for
// the MR rows m of x of workgroup z (m = z * MR + j), shapes and fused variants (NORM, ACC,
// SWIGLU, BIAS; not ROPE) in lib/gemv_io.wgsl. Unlike gemv.wgsl, where each row of x is its
// own workgroup and reads the weights again, each weight vec4 is loaded once and used for
// all MR rows: a batch's step costs one pass over the weights. x and y must hold whole
// groups of MR rows (the batch pads them): rows past the batch compute what they hold.
// One workgroup: ROWS consecutive rows of W for MR rows of x; every thread strides over K.
#include lib/gemv_io.wgsl

override WG: u32 = 128;
override ROWS: u32 = 2;
override MR: u32 = 4;
const MAX_ROWS: u32 = 4u;
#if MR16
const MAX_MR: u32 = 16u;  // MR up to 16: one pass over the weights for a 16-row batch
#else
const MAX_MR: u32 = 8u;
#endif

// Partial sums: slot r * MR + j for row r of W and row j of x, then (NORM) MR slots of squares.
var<workgroup> red: array<f32, WG * (ROWS + 1u) * MR>;

fn total(slot: u32) -> f32 {
  return red[slot * WG];
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let group = wid.y * p.groups_x + wid.x;
  let row0 = group * ROWS;
  if (row0 >= p.N) { return; }   // uniform per workgroup
  let m0 = wid.z * MR;
  let kv = p.K / 8u;              // vec4<u32> per row
  let k4 = p.K / 4u;

  var acc: array<f32, MAX_ROWS * MAX_MR>;
  var ss: array<f32, MAX_MR>;
  for (var s = 0u; s < MAX_ROWS * MAX_MR; s = s + 1u) { acc[s] = 0.0; }
  for (var j = 0u; j < MAX_MR; j = j + 1u) { ss[j] = 0.0; }
  for (var i = lid; i < kv; i = i + WG) {
    var wv: array<vec4<u32>, MAX_ROWS>;
    for (var r = 0u; r < ROWS; r = r + 1u) { wv[r] = w[phys(min(row0 + r, p.N - 1u)) * kv + i]; }
    for (var j = 0u; j < MR; j = j + 1u) {
      var sq = 0.0;
      let xs = load_x((m0 + j) * k4, i, &sq);
      ss[j] = ss[j] + sq;
      for (var r = 0u; r < ROWS; r = r + 1u) { acc[r * MR + j] = acc[r * MR + j] + dot8(wv[r], xs[0], xs[1]); }
    }
  }

  let slots = (ROWS + 1u) * MR;
  for (var s = 0u; s < ROWS * MR; s = s + 1u) { red[s * WG + lid] = acc[s]; }
  for (var j = 0u; j < MR; j = j + 1u) { red[(ROWS * MR + j) * WG + lid] = ss[j]; }
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    workgroupBarrier();
    if (lid < stride) {
      for (var s = 0u; s < slots; s = s + 1u) { red[s * WG + lid] = red[s * WG + lid] + red[s * WG + lid + stride]; }
    }
  }
  workgroupBarrier();

  // Thread t writes row r = t / MR of W for row j = t % MR of x (SWIGLU: the pair at 2r).
#if SWIGLU
  let outs = ROWS / 2u;
#else
  let outs = ROWS;
#endif
  if (lid >= outs * MR) { return; }
  let r = lid / MR;
  let j = lid % MR;
#if NORM
  let scale = norm_scale(total(ROWS * MR + j));
#else
  let scale = 1.0;
#endif
#if SWIGLU
  if (row0 + 2u * r + 1u < p.N) {
    finish(m0 + j, row0 + 2u * r, total(2u * r * MR + j) * scale, total((2u * r + 1u) * MR + j) * scale);
  }
#else
  if (row0 + r < p.N) {
    finish(m0 + j, row0 + r, total(r * MR + j) * scale, 0.0);
  }
#endif
}
