// Causal prefill attention over the paged KV pool, subgroup variant (same contract as
// attn_prefill.wgsl; needs subgroups of at least 8 lanes). Row = (query, head-in-group);
// 8 consecutive lanes own a row, lane j keeping dims [j*D/8, (j+1)*D/8) of its query and of
// its output in registers. Per tile of BK keys a lane forms partial scores over its dims,
// three xor-shuffles give every lane the full scores, and the online softmax and P·V run
// in registers: one shared-memory load per two FMAs (the plain kernel needs three per two).
// Buffers, the tile load and the WINDOW mode: lib/attn_prefill_io.wgsl.
diagnostic(off, subgroup_uniformity);

#include lib/attn_prefill_io.wgsl
#include lib/attn_prefill_tile.wgsl

override G: u32 = 1;      // query heads per kv head
override D: u32 = 128;    // head dim: multiple of 16, at most 128
const ROWS: u32 = 32u;    // rows per workgroup (256 threads / 8 lanes)
const BK: u32 = 32u;      // keys per tile
const NEG: f32 = -3.0e38;
const MAX_DL: u32 = 8u;   // (D / 8) / 2 u32 words per lane, D <= 128

var<workgroup> ks: array<u32, BK * D / 2u>;
var<workgroup> vs: array<u32, BK * D / 2u>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let kvh = wid.y;
  let row0 = wid.x * ROWS;
  let total_rows = p.M * G;
  let half_d = D / 2u;
  let words = D / 16u;                 // u32 words (2 dims each) a lane owns
  let r = lid / 8u;
  let j = lid % 8u;
  let grow = row0 + r;
  let row_ok = grow < total_rows;
  let rc = min(grow, total_rows - 1u);
  let qi = rc / G;
  let h = kvh * G + rc % G;
  let qpos = p.pos0 + qi;
  let last_row = min(row0 + ROWS, total_rows) - 1u;
  let kbeg = keys_begin();
  let kend = keys_end(p.pos0 + last_row / G + 1u);

  // This lane's slice of q, pre-scaled: dims 2 * (j * words + w) and +1.
  var qv: array<vec2<f32>, MAX_DL>;
  var acc: array<vec2<f32>, MAX_DL>;
  let qb = (qi * p.H + h) * D;
  for (var w = 0u; w < words; w = w + 1u) {
    let d = 2u * (j * words + w);
    qv[w] = vec2<f32>(q[qb + d], q[qb + d + 1u]) * p.scale;
    acc[w] = vec2<f32>(0.0);
  }
  var mrun = NEG;
  var l = 0.0;
#if WINDOW
  let sb = state_base(qi, h);
  if ((p.flags & FIRST) == 0u && row_ok) {
    for (var w = 0u; w < words; w = w + 1u) {
      let d = 2u * (j * words + w);
      acc[w] = vec2<f32>(state[sb + d], state[sb + d + 1u]);
    }
    mrun = state[sb + D];
    l = state[sb + D + 1u];
  }
#endif

  for (var kt = kbeg; kt < kend; kt = kt + BK) {
    workgroupBarrier();
    load_tile(lid, kt, kend, kvh);
    workgroupBarrier();
    // Partial scores over this lane's dims, then the sum over the row's 8 lanes.
    var s: array<f32, BK>;
    for (var kk = 0u; kk < BK; kk = kk + 1u) {
      var part = 0.0;
      for (var w = 0u; w < words; w = w + 1u) {
        let k2 = unpack2x16float(ks[kk * half_d + j * words + w]);
        part = part + dot(qv[w], k2);
      }
      part = part + subgroupShuffleXor(part, 1u);
      part = part + subgroupShuffleXor(part, 2u);
      part = part + subgroupShuffleXor(part, 4u);
      let pos = kt + kk;
      s[kk] = select(NEG, part, pos <= qpos && pos < kend);
    }
    var tmax = NEG;
    for (var kk = 0u; kk < BK; kk = kk + 1u) { tmax = max(tmax, s[kk]); }
    let mnew = max(mrun, tmax);
    let alpha = exp(mrun - mnew);
    mrun = mnew;
    l = l * alpha;
    for (var w = 0u; w < words; w = w + 1u) { acc[w] = acc[w] * alpha; }
    for (var kk = 0u; kk < BK; kk = kk + 1u) {
      let pv = select(0.0, exp(s[kk] - mnew), s[kk] > NEG);
      l = l + pv;
      for (var w = 0u; w < words; w = w + 1u) {
        acc[w] = acc[w] + pv * unpack2x16float(vs[kk * half_d + j * words + w]);
      }
    }
  }

  if (row_ok) {
#if WINDOW
    if ((p.flags & LAST) == 0u) {
      for (var w = 0u; w < words; w = w + 1u) {
        let d = 2u * (j * words + w);
        state[sb + d] = acc[w].x;
        state[sb + d + 1u] = acc[w].y;
      }
      if (j == 0u) {
        state[sb + D] = mrun;
        state[sb + D + 1u] = l;
      }
      return;
    }
#endif
    for (var w = 0u; w < words; w = w + 1u) {
      let d = 2u * (j * words + w);
      out[qb + d] = acc[w].x / l;
      out[qb + d + 1u] = acc[w].y / l;
    }
  }
}
