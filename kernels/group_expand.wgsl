// The grouped choice without the host (issue 13 §1 with §4): after the groups of a layer are
// scored and the best `keep` kept (select.wgsl over group abstracts), lists the candidates the
// host would list from them (grouped-select.ts), so that a pipelined step scores and selects
// them on the GPU with no read-back between the two passes: the sink chunks [0, S), then the
// chunks of the kept groups within [S, n - R) in ascending order, then the recent chunks
// [n - R, n). It also writes the uniforms of the candidates' score and select passes (their
// count is known only here) and the count of chunks it lists from groups (the stats').
//   kept:     (keep) vec2<u32> (group, _) from select.wgsl, in any order, distinct
//   cand:     (S + listed + R) u32 chunk ids (= abstract slots: every abstract resident)
//   score_p:  (4) u32, score.wgsl's Params (n, KV, D, scale bits)
//   select_p: (8) u32, select.wgsl's Params (n, 1, S, R, K, BS, stride, 0)
//   listed:   (1) u32, the chunks listed from groups
// One workgroup: thread i places kept group i after the chunks of the kept groups below it.
struct Params { n: u32, S: u32, R: u32, K: u32, size: u32, keep: u32, KV: u32, D: u32, scale: f32, BS: u32, stride: u32, pad: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> kept: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read_write> cand: array<u32>;
@group(0) @binding(3) var<storage, read_write> score_p: array<u32>;
@group(0) @binding(4) var<storage, read_write> select_p: array<u32>;
@group(0) @binding(5) var<storage, read_write> listed: array<u32>;

const WG: u32 = 256u;

var<workgroup> total: u32;

// Group g's chunks in [S, n - R): [first, first + count).
fn first_of(g: u32) -> u32 { return max(p.S, g * p.size); }
fn count_of(g: u32) -> u32 {
  let a = first_of(g);
  let b = min(p.n - p.R, (g + 1u) * p.size);
  return select(0u, b - a, b > a);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  if (lid == 0u) {
    var t = 0u;
    for (var j = 0u; j < p.keep; j = j + 1u) { t = t + count_of(kept[j].x); }
    total = t;
  }
  for (var i = lid; i < p.keep; i = i + WG) {
    let g = kept[i].x;
    var at = p.S;
    for (var j = 0u; j < p.keep; j = j + 1u) {
      let h = kept[j].x;
      if (h < g) { at = at + count_of(h); }
    }
    let a = first_of(g);
    for (var c = 0u; c < count_of(g); c = c + 1u) { cand[at + c] = a + c; }
  }
  for (var i = lid; i < p.S; i = i + WG) { cand[i] = i; }
  workgroupBarrier();
  let listed_n = total;
  for (var i = lid; i < p.R; i = i + WG) { cand[p.S + listed_n + i] = p.n - p.R + i; }
  if (lid == 0u) {
    let n = p.S + listed_n + p.R;
    score_p[0] = n;
    score_p[1] = p.KV;
    score_p[2] = p.D;
    score_p[3] = bitcast<u32>(p.scale);
    select_p[0] = n;
    select_p[1] = 1u;
    select_p[2] = p.S;
    select_p[3] = p.R;
    select_p[4] = p.K;
    select_p[5] = p.BS;
    select_p[6] = p.stride;
    select_p[7] = 0u;
    listed[0] = listed_n;
  }
}
