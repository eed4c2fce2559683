// Top-k chunk selection on the GPU (Quest-style, per KV head), so that a decode step needs
// no read-back: workgroup `kvh` keeps the sink chunks (the first S of the list), the recent
// ones (the last R), the K best-scoring of the rest (radix select on the score bits, ties
// broken by an atomic counter), and the partial last block, and writes them as its attn_decode list.
//   scores: (n, KV) f32 from score.wgsl;  blocks: (n + 1) u32 physical block of each listed
//   chunk, then the partial block (when partial > 0)
//   entries: (KV, stride) vec2<u32> (block, tokens);  seqs: (KV) vec2<u32> (first, count)
// With VALUES (top-k sampling candidates: scores = logits, blocks = token ids, KV = 1) the
// chosen entries are (id, bits of its logit). With ROWS as well, the candidates of several
// rows of a decode batch's logits (rows, n) at once: workgroup j takes row rows[j].x's
// rows[j].y best (its own K), written as list j.
struct Params { n: u32, KV: u32, S: u32, R: u32, K: u32, BS: u32, stride: u32, partial: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> scores: array<f32>;
@group(0) @binding(2) var<storage, read> blocks: array<u32>;
@group(0) @binding(3) var<storage, read_write> entries: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read_write> seqs: array<vec2<u32>>;
#if ROWS
@group(0) @binding(5) var<storage, read> rows: array<vec4<u32>>;
#endif

const WG: u32 = 256u;   // one thread per radix bin

var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> above: array<u32, 256>;
var<workgroup> count: atomic<u32>;
var<workgroup> ties: atomic<u32>;
var<workgroup> prefix: u32;
var<workgroup> want: u32;

// Order-preserving map of f32 to u32: a larger score gives a larger key.
fn key_of(s: f32) -> u32 {
  let b = bitcast<u32>(s);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn put(kvh: u32, block: u32, tokens: u32) {
  let j = atomicAdd(&count, 1u);
  entries[kvh * p.stride + j] = vec2<u32>(block, tokens);
}

// Candidate i's score for list kvh.
fn score_of(i: u32, kvh: u32) -> f32 {
#if ROWS
  return scores[rows[kvh].x * p.n + i];
#else
  return scores[i * p.KV + kvh];
#endif
}

// How many of the candidates list kvh keeps.
fn keep_of(kvh: u32) -> u32 {
#if ROWS
  return rows[kvh].y;
#else
  return p.K;
#endif
}

// A selected candidate: with VALUES (sampling candidates) its score's bits instead of tokens.
fn put_scored(kvh: u32, i: u32) {
#if VALUES
  let j = atomicAdd(&count, 1u);
  entries[kvh * p.stride + j] = vec2<u32>(blocks[i], bitcast<u32>(score_of(i, kvh)));
#else
  put(kvh, blocks[i], p.BS);
#endif
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let kvh = wid.x;
  let lo = min(p.S, p.n);                  // candidates are [lo, hi)
  let hi = max(lo, select(0u, p.n - p.R, p.n > p.R));
  let k = min(keep_of(kvh), hi - lo);
  if (lid == 0u) {
    atomicStore(&count, 0u);
    atomicStore(&ties, 0u);
    prefix = 0u;
    want = k;
  }
  // Radix select, 8 bits a pass from the top: the k-th largest key among the candidates.
  for (var round = 0u; round < 4u; round = round + 1u) {
    let shift = 24u - 8u * round;
    for (var b = lid; b < 256u; b = b + WG) { atomicStore(&hist[b], 0u); }
    workgroupBarrier();
    let known = prefix;
    let mask = select(0u, 0xffffffffu << (shift + 8u), round > 0u);
    for (var i = lo + lid; i < hi; i = i + WG) {
      let key = key_of(score_of(i, kvh));
      if ((key & mask) == (known & mask)) { atomicAdd(&hist[(key >> shift) & 0xffu], 1u); }
    }
    workgroupBarrier();
    // Suffix sums over the 256 bins (how many keys are in bin b or above), in parallel.
    for (var b = lid; b < 256u; b = b + WG) { above[b] = atomicLoad(&hist[b]); }
    for (var step = 1u; step < 256u; step = step * 2u) {
      workgroupBarrier();
      var v = 0u;
      for (var b = lid; b < 256u; b = b + WG) { if (b + step < 256u) { v = above[b + step]; } }
      workgroupBarrier();
      for (var b = lid; b < 256u; b = b + WG) { if (b + step < 256u) { above[b] = above[b] + v; } }
    }
    workgroupBarrier();
    let need = want;
    workgroupBarrier();
    // The bin holding the need-th largest key: suffix(b) >= need > suffix(b + 1).
    for (var b = lid; b < 256u; b = b + WG) {
      let next = select(0u, above[b + 1u], b < 255u);
      if (need > 0u && above[b] >= need && next < need) {
        prefix = known | (b << shift);
        want = need - next;   // how many keys equal to the prefix so far are still needed
      }
    }
    workgroupBarrier();
  }
  let threshold = prefix;
  let tie_quota = want;
  // Compaction: above the threshold always, equal to it up to the quota.
  if (k > 0u) {
    for (var i = lo + lid; i < hi; i = i + WG) {
      let key = key_of(score_of(i, kvh));
      if (key > threshold) {
        put_scored(kvh, i);
      } else if (key == threshold && atomicAdd(&ties, 1u) < tie_quota) {
        put_scored(kvh, i);
      }
    }
  }
  for (var i = lid; i < lo; i = i + WG) { put(kvh, blocks[i], p.BS); }
  for (var i = hi + lid; i < p.n; i = i + WG) { put(kvh, blocks[i], p.BS); }
  if (lid == 0u && p.partial > 0u) { put(kvh, blocks[p.n], p.partial); }
  workgroupBarrier();
  if (lid == 0u) { seqs[kvh] = vec2<u32>(kvh * p.stride, atomicLoad(&count)); }
}
