// Matrix-vector product for decode, one subgroup per group of ROWS rows (devices with
// subgroups; gemv.wgsl is the portable variant); contract in lib/gemv_io.wgsl.
// A workgroup owns RPW consecutive rows; its subgroups take groups of ROWS rows in turn, so
// any subgroup size covers them. Lanes stride over K with UNROLL loads in flight per row,
// and each row's sum is one subgroupAdd: no workgroup barrier outside the NORM prologue.
// A subgroup's row loop depends on lid / subgroup_size, uniform per subgroup, which WGSL's
// analysis cannot see.
diagnostic(off, subgroup_uniformity);

#include lib/gemv_io.wgsl

override WG: u32 = 128;
override ROWS: u32 = 2;   // rows per subgroup pass (even with SWIGLU)
override RPW: u32 = 8;    // rows per workgroup, a multiple of ROWS
const MAX_ROWS: u32 = 8u;
const UNROLL: u32 = 4u;

var<workgroup> red: array<f32, WG>;

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
        if (r0 + r + 1u < p.N) { finish(m, r0 + r, acc[r], acc[r + 1u]); }
      }
#else
      for (var r = 0u; r < ROWS; r = r + 1u) {
        if (r0 + r < p.N) { finish(m, r0 + r, acc[r], 0.0); }
      }
#endif
    }
  }
}
