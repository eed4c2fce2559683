// Matrix-vector product for decode, one subgroup per group of ROWS rows (devices with
// subgroups; gemv.wgsl is the portable variant); contract in lib/gemv_io.wgsl.
// A workgroup owns RPW consecutive rows; its subgroups take groups of ROWS rows in turn, so
// any subgroup size covers them. Lanes stride over K with UNROLL loads in flight per row,
// and each row's sum (and NORM's sum of squares) is one subgroupAdd: no workgroup barrier.
// A subgroup's row loop depends on lid / subgroup_size, uniform per subgroup, which WGSL's
// analysis cannot see.
diagnostic(off, subgroup_uniformity);

#include lib/gemv_io.wgsl

override WG: u32 = 128;
override ROWS: u32 = 2;   // rows per subgroup pass (even with SWIGLU, a multiple of 4 with ROPE)
override RPW: u32 = 8;    // rows per workgroup, a multiple of ROWS
override UNROLL: u32 = 4u; // loads in flight per row and lane, at most MAX_UNROLL
const MAX_ROWS: u32 = 8u;
const MAX_UNROLL: u32 = 16u;

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

  let sg = lid / sgs;
  let nsg = WG / sgs;
  for (var r0 = first + sg * ROWS; r0 < min(first + RPW, p.N); r0 = r0 + nsg * ROWS) {
    var acc: array<f32, MAX_ROWS>;
    var rowoff: array<u32, MAX_ROWS>;
    for (var r = 0u; r < MAX_ROWS; r = r + 1u) {
      acc[r] = 0.0;
      rowoff[r] = phys(min(r0 + r, p.N - 1u)) * kv;
    }
    var ss = 0.0;
    var i = sgi;
    for (; i + (UNROLL - 1u) * sgs < kv; i = i + UNROLL * sgs) {
      var wv: array<vec4<u32>, MAX_UNROLL * MAX_ROWS>;
      for (var u = 0u; u < UNROLL; u = u + 1u) {
        for (var r = 0u; r < ROWS; r = r + 1u) { wv[u * MAX_ROWS + r] = w[rowoff[r] + i + u * sgs]; }
      }
      for (var u = 0u; u < UNROLL; u = u + 1u) {
        let xs = load_x(xbase, i + u * sgs, &ss);
        for (var r = 0u; r < ROWS; r = r + 1u) { acc[r] = acc[r] + dot8(wv[u * MAX_ROWS + r], xs[0], xs[1]); }
      }
    }
    for (; i < kv; i = i + sgs) {
      let xs = load_x(xbase, i, &ss);
      for (var r = 0u; r < ROWS; r = r + 1u) { acc[r] = acc[r] + dot8(w[rowoff[r] + i], xs[0], xs[1]); }
    }
#if NORM
    let scale = norm_scale(subgroupAdd(ss));
#else
    let scale = 1.0;
#endif
    for (var r = 0u; r < ROWS; r = r + 1u) { acc[r] = subgroupAdd(acc[r]) * scale; }
    if (sgi == 0u) {
#if ROPE
      for (var r = 0u; r + 3u < ROWS; r = r + 4u) {
        if (r0 + r < p.N) { finish_rope(m, r0 + r, acc[r], acc[r + 1u], acc[r + 2u], acc[r + 3u]); }
      }
#else
#if SWIGLU
      for (var r = 0u; r + 1u < ROWS; r = r + 2u) {
        if (r0 + r + 1u < p.N) { finish(m, r0 + r, acc[r], acc[r + 1u]); }
      }
#else
      for (var r = 0u; r < ROWS; r = r + 1u) {
        if (r0 + r < p.N) { finish(m, r0 + r, acc[r], 0.0); }
      }
#endif
#endif
    }
  }
}
