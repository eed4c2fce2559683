// Causal prefill attention, tiled (flash-attention style) over the paged KV pool.
// Workgroup (tile, kv head) owns 32 rows = (query, head-in-group) pairs of that kv head,
// so every K/V tile loaded into workgroup memory serves all G query heads; thread
// (row r, lane j of 8) scores 2 of the 16 keys of a tile and accumulates D/8 output columns
// with an online softmax. Queries are positions pos0 .. pos0 + M - 1 of one sequence;
// keys 0 .. pos0 + M - 1 are read through the block table.
// Buffers, the tile load and the WINDOW mode (one pass of several over the keys, the
// softmax state carried between passes): lib/attn_prefill_io.wgsl.
#include lib/attn_prefill_io.wgsl
#include lib/attn_prefill_tile.wgsl

override G: u32 = 1;      // query heads per kv head
override D: u32 = 128;    // head dim: multiple of 16, at most 128
const ROWS: u32 = 32u;
const BK: u32 = 16u;
const NEG: f32 = -3.0e38;

var<workgroup> qs: array<f32, ROWS * D>;
var<workgroup> ks: array<u32, BK * D / 2u>;
var<workgroup> vs: array<u32, BK * D / 2u>;
var<workgroup> sc: array<f32, ROWS * BK>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let kvh = wid.y;
  let row0 = wid.x * ROWS;
  let total_rows = p.M * G;
  let half_d = D / 2u;
  let r = lid / 8u;
  let j = lid % 8u;
  let grow = row0 + r;
  let row_ok = grow < total_rows;
  let qi = min(grow, total_rows - 1u) / G;
  let h = kvh * G + min(grow, total_rows - 1u) % G;
  let qpos = p.pos0 + qi;
  let last_row = min(row0 + ROWS, total_rows) - 1u;
  let kbeg = keys_begin();
  let kend = keys_end(p.pos0 + last_row / G + 1u);   // keys [kbeg, kend) are visible to some row

  for (var i = lid; i < ROWS * D; i = i + 256u) {
    let rr = row0 + i / D;
    let rc = min(rr, total_rows - 1u);
    qs[i] = q[((rc / G) * p.H + kvh * G + rc % G) * D + i % D] * p.scale;
  }

  var mrun = NEG;
  var l = 0.0;
  var acc: array<vec2<f32>, 8>;
  for (var c = 0u; c < 8u; c = c + 1u) { acc[c] = vec2<f32>(0.0); }
  let npairs = D / 16u;    // column pairs per thread: pair j + 8c
#if WINDOW
  let sb = state_base(qi, h);
  if ((p.flags & FIRST) == 0u && row_ok) {
    for (var c = 0u; c < npairs; c = c + 1u) {
      let pc = j + 8u * c;
      acc[c] = vec2<f32>(state[sb + 2u * pc], state[sb + 2u * pc + 1u]);
    }
    mrun = state[sb + D];
    l = state[sb + D + 1u];
  }
#endif

  for (var kt = kbeg; kt < kend; kt = kt + BK) {
    workgroupBarrier();
    load_tile(lid, kt, kend, kvh);
    workgroupBarrier();
    for (var kk = 2u * j; kk < 2u * j + 2u; kk = kk + 1u) {
      var s = 0.0;
      for (var c = 0u; c < half_d; c = c + 1u) {
        let k2 = unpack2x16float(ks[kk * half_d + c]);
        s = s + qs[r * D + 2u * c] * k2.x + qs[r * D + 2u * c + 1u] * k2.y;
      }
      let pos = kt + kk;
      sc[r * BK + kk] = select(NEG, s, pos <= qpos && pos < kend);
    }
    workgroupBarrier();
    var tmax = NEG;
    for (var kk = 0u; kk < BK; kk = kk + 1u) { tmax = max(tmax, sc[r * BK + kk]); }
    let mnew = max(mrun, tmax);
    let alpha = exp(mrun - mnew);
    mrun = mnew;
    l = l * alpha;
    for (var c = 0u; c < npairs; c = c + 1u) { acc[c] = acc[c] * alpha; }
    for (var kk = 0u; kk < BK; kk = kk + 1u) {
      let sv = sc[r * BK + kk];
      let pv = select(0.0, exp(sv - mnew), sv > NEG);
      l = l + pv;
      for (var c = 0u; c < npairs; c = c + 1u) {
        acc[c] = acc[c] + pv * unpack2x16float(vs[kk * half_d + j + 8u * c]);
      }
    }
  }

  if (row_ok) {
#if WINDOW
    if ((p.flags & LAST) == 0u) {
      for (var c = 0u; c < npairs; c = c + 1u) {
        let pc = j + 8u * c;
        state[sb + 2u * pc] = acc[c].x;
        state[sb + 2u * pc + 1u] = acc[c].y;
      }
      if (j == 0u) {
        state[sb + D] = mrun;
        state[sb + D + 1u] = l;
      }
      return;
    }
#endif
    let ob = (qi * p.H + h) * D;
    for (var c = 0u; c < npairs; c = c + 1u) {
      let pc = j + 8u * c;
      out[ob + 2u * pc] = acc[c].x / l;
      out[ob + 2u * pc + 1u] = acc[c].y / l;
    }
  }
}
