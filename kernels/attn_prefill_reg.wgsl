// Causal prefill attention over the paged KV pool for devices where workgroup memory and
// barriers cost more than they save (lavapipe: a workgroup runs on one CPU thread as SIMD
// groups of invocations, and each barrier switches all of them). One invocation per row =
// (query, head-in-group) of the workgroup's KV head, holding its query and output in
// registers; every row of the workgroup reads the same key at the same time, so K and V
// loads are uniform (one load, broadcast) and the arithmetic runs across rows. Keys go in
// tiles of BK: the tile's scores (query dims outer, keys inner), one online-softmax rescale,
// then P·V (output dims outer, keys inner). No workgroup memory, no barrier. Same contract
// and WINDOW mode as attn_prefill.wgsl (lib/attn_prefill_io.wgsl).
#include lib/attn_prefill_io.wgsl

override G: u32 = 1;      // query heads per kv head
override D: u32 = 128;    // head dim: multiple of 16, at most 128
const ROWS: u32 = 32u;    // rows per workgroup (one per invocation; PREFILL_ROWS)
const BK: u32 = 8u;       // keys per tile
const NEG: f32 = -3.0e38;
const MAX_D4: u32 = 32u;  // D / 4, D <= 128

@compute @workgroup_size(32)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let kvh = wid.y;
  let row0 = wid.x * ROWS;
  let total_rows = p.M * G;
  let grow = row0 + lid;
  let row_ok = grow < total_rows;
  let rc = min(grow, total_rows - 1u);
  let qi = rc / G;
  let h = kvh * G + rc % G;
  let qpos = p.pos0 + qi;
  let last_row = min(row0 + ROWS, total_rows) - 1u;
  let kbeg = keys_begin();
  let kend = keys_end(p.pos0 + last_row / G + 1u);
  let d4 = D / 4u;

  var qv: array<vec4<f32>, MAX_D4>;
  var acc: array<vec4<f32>, MAX_D4>;
  let qb = (qi * p.H + h) * D;
  for (var c = 0u; c < d4; c = c + 1u) {
    qv[c] = vec4<f32>(q[qb + 4u * c], q[qb + 4u * c + 1u], q[qb + 4u * c + 2u], q[qb + 4u * c + 3u]) * p.scale;
    acc[c] = vec4<f32>(0.0);
  }
  var mrun = NEG;
  var l = 0.0;
#if WINDOW
  let sb = state_base(qi, h);
  if ((p.flags & FIRST) == 0u && row_ok) {
    for (var c = 0u; c < d4; c = c + 1u) {
      acc[c] = vec4<f32>(state[sb + 4u * c], state[sb + 4u * c + 1u], state[sb + 4u * c + 2u], state[sb + 4u * c + 3u]);
    }
    mrun = state[sb + D];
    l = state[sb + D + 1u];
  }
#endif

  for (var kt = kbeg; kt < kend; kt = kt + BK) {
    let nk = min(BK, kend - kt);
    var kw: array<u32, BK>;
    for (var kk = 0u; kk < BK; kk = kk + 1u) { kw[kk] = kv_word(min(kt + kk, kend - 1u), kvh); }
    var s: array<f32, BK>;
    for (var kk = 0u; kk < BK; kk = kk + 1u) { s[kk] = 0.0; }
    for (var c = 0u; c < d4; c = c + 1u) {
      let qc = qv[c];
      for (var kk = 0u; kk < BK; kk = kk + 1u) {
        let k4 = vec4<f32>(unpack2x16float(kpool[kw[kk] + 2u * c]), unpack2x16float(kpool[kw[kk] + 2u * c + 1u]));
        s[kk] = s[kk] + dot(qc, k4);
      }
    }
    var tmax = NEG;
    for (var kk = 0u; kk < BK; kk = kk + 1u) {
      s[kk] = select(NEG, s[kk], kk < nk && kt + kk <= qpos);
      tmax = max(tmax, s[kk]);
    }
    let mnew = max(mrun, tmax);
    let alpha = exp(mrun - mnew);
    mrun = mnew;
    var pv: array<f32, BK>;
    var psum = 0.0;
    for (var kk = 0u; kk < BK; kk = kk + 1u) {
      pv[kk] = select(0.0, exp(s[kk] - mnew), s[kk] > NEG);
      psum = psum + pv[kk];
    }
    l = l * alpha + psum;
    for (var c = 0u; c < d4; c = c + 1u) {
      var a = acc[c] * alpha;
      for (var kk = 0u; kk < BK; kk = kk + 1u) {
        a = a + pv[kk] * vec4<f32>(unpack2x16float(vpool[kw[kk] + 2u * c]), unpack2x16float(vpool[kw[kk] + 2u * c + 1u]));
      }
      acc[c] = a;
    }
  }

  if (row_ok) {
#if WINDOW
    if ((p.flags & LAST) == 0u) {
      for (var c = 0u; c < d4; c = c + 1u) {
        state[sb + 4u * c] = acc[c].x;
        state[sb + 4u * c + 1u] = acc[c].y;
        state[sb + 4u * c + 2u] = acc[c].z;
        state[sb + 4u * c + 3u] = acc[c].w;
      }
      state[sb + D] = mrun;
      state[sb + D + 1u] = l;
      return;
    }
#endif
    let ob = (qi * p.H + h) * D;
    for (var c = 0u; c < d4; c = c + 1u) {
      out[ob + 4u * c] = acc[c].x / l;
      out[ob + 4u * c + 1u] = acc[c].y / l;
      out[ob + 4u * c + 2u] = acc[c].z / l;
      out[ob + 4u * c + 3u] = acc[c].w / l;
    }
  }
}
