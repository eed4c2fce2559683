// H2O eviction at KV-block granularity, on the GPU so that a step needs no read-back:
// workgroup j rebuilds list j's attn_decode entries from the accumulated masses. Of the
// candidates (full blocks past the first S and before the last R, not yet evicted) it keeps
// the K heaviest and evicts the others for good (mass := EVICTED, never listed again); the
// sink blocks, the recent ones and the partial last block are listed unless evicted earlier.
// The heaviest are found by radix select on (mass, logical index): ties go to the more
// recent block, so the kept set is a pure function of the masses. Entries are written in
// logical order (a workgroup prefix sum), so a step's attention does not depend on timing.
//   blocks:   (n + 1) u32 physical block of each logical block, then the partial one
//   mass:     (lists, MB) f32 by physical block, >= 0, or EVICTED
//   entries:  (lists, stride) vec2<u32> (block, tokens);  seqs: (lists) vec2<u32> (first, count)
//   evicted:  (lists) u32 blocks evicted since the sequence began (reset when fresh0 = 0)
// Blocks at logical index >= fresh0 are new to the masses (appended, or reused after a
// reset or truncation): their mass starts at 0. Logical indices must be below 2^24.
struct Params {
  n: u32, lists: u32, S: u32, R: u32, K: u32, BS: u32, stride: u32, partial: u32,
  fresh0: u32, MB: u32, pad0: u32, pad1: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> blocks: array<u32>;
@group(0) @binding(2) var<storage, read_write> mass: array<f32>;
@group(0) @binding(3) var<storage, read_write> entries: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read_write> seqs: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read_write> evicted: array<u32>;

const WG: u32 = 256u;   // one thread per radix bin
const EVICTED: f32 = -1.0;

var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> above: array<u32, 256>;
var<workgroup> scan: array<u32, 256>;
var<workgroup> candidates: atomic<u32>;
var<workgroup> dropped: atomic<u32>;
var<workgroup> prefix_key: u32;
var<workgroup> prefix_idx: u32;
var<workgroup> want: u32;
var<workgroup> done: u32;

// Order-preserving map of f32 to u32: a larger mass gives a larger key.
fn key_of(s: f32) -> u32 {
  let b = bitcast<u32>(s);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

// Radix digit `round` of the 56-bit composite (key, index): rounds 0-3 are the key's bytes
// from the top, rounds 4-6 the index's (24 bits).
fn digit(key: u32, i: u32, round: u32) -> u32 {
  if (round < 4u) { return (key >> (24u - 8u * round)) & 0xffu; }
  return (i >> (48u - 8u * round)) & 0xffu;
}

// Whether (key, i) agrees with the prefix on the digits of the rounds before `round`.
fn matches(key: u32, i: u32, pk: u32, pi: u32, round: u32) -> bool {
  if (round == 0u) { return true; }
  if (round < 4u) { return (key >> (32u - 8u * round)) == (pk >> (32u - 8u * round)); }
  if (key != pk) { return false; }
  if (round == 4u) { return true; }
  return (i >> (56u - 8u * round)) == (pi >> (56u - 8u * round));
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let j = wid.x;
  let base = j * p.MB;
  let total = p.n + select(0u, 1u, p.partial > 0u);
  for (var i = p.fresh0 + lid; i < total; i = i + WG) { mass[base + blocks[i]] = 0.0; }
  if (lid == 0u) {
    atomicStore(&candidates, 0u);
    atomicStore(&dropped, 0u);
    prefix_key = 0u;
    prefix_idx = 0u;
  }
  storageBarrier();
  workgroupBarrier();
  let lo = min(p.S, p.n);                  // candidates are the live blocks of [lo, hi)
  let hi = max(lo, select(0u, p.n - p.R, p.n > p.R));
  for (var i = lo + lid; i < hi; i = i + WG) {
    if (mass[base + blocks[i]] >= 0.0) { atomicAdd(&candidates, 1u); }
  }
  workgroupBarrier();
  if (lid == 0u) {
    want = min(p.K, atomicLoad(&candidates));
    done = select(0u, 1u, want == 0u);
  }
  let k = workgroupUniformLoad(&want);

  // Radix select, 8 bits a round from the top: the k-th largest (key, index) of the candidates.
  // It stops at the round whose bin holds exactly the last ones needed (all candidates kept:
  // the first round; distinct masses: the index rounds are rarely reached).
  for (var round = 0u; round < 7u; round = round + 1u) {
    if (workgroupUniformLoad(&done) == 1u) { break; }
    atomicStore(&hist[lid], 0u);
    workgroupBarrier();
    let pk = prefix_key;
    let pi = prefix_idx;
    for (var i = lo + lid; i < hi; i = i + WG) {
      let m = mass[base + blocks[i]];
      let key = key_of(m);
      if (m >= 0.0 && matches(key, i, pk, pi, round)) { atomicAdd(&hist[digit(key, i, round)], 1u); }
    }
    workgroupBarrier();
    // Suffix sums over the 256 bins (how many keys are in bin b or above), in parallel.
    above[lid] = atomicLoad(&hist[lid]);
    for (var step = 1u; step < 256u; step = step * 2u) {
      workgroupBarrier();
      var v = 0u;
      if (lid + step < 256u) { v = above[lid + step]; }
      workgroupBarrier();
      above[lid] = above[lid] + v;
    }
    workgroupBarrier();
    let need = want;
    workgroupBarrier();
    // The bin holding the need-th largest: suffix(b) >= need > suffix(b + 1).
    let next = select(0u, above[min(lid + 1u, 255u)], lid < 255u);
    if (need > 0u && above[lid] >= need && next < need) {
      if (round < 4u) { prefix_key = pk | (lid << (24u - 8u * round)); } else { prefix_idx = pi | (lid << (48u - 8u * round)); }
      want = need - next;
      done = select(0u, 1u, above[lid] == need);
    }
    workgroupBarrier();
  }
  let tk = prefix_key;
  let ti = prefix_idx;

  // Compaction in logical order; candidates below the threshold are evicted.
  var count = 0u;
  var gone = 0u;
  for (var c0 = 0u; c0 < total; c0 = c0 + WG) {
    let i = c0 + lid;
    var take = false;
    var block = 0u;
    if (i < total) {
      block = blocks[i];
      let m = mass[base + block];
      if (m >= 0.0) {
        if (i >= lo && i < hi) {
          let key = key_of(m);
          take = k > 0u && (key > tk || (key == tk && i >= ti));
          if (!take) {
            mass[base + block] = EVICTED;
            gone = gone + 1u;
          }
        } else {
          take = true;
        }
      }
    }
    scan[lid] = select(0u, 1u, take);
    for (var step = 1u; step < WG; step = step * 2u) {
      workgroupBarrier();
      var v = 0u;
      if (lid >= step) { v = scan[lid - step]; }
      workgroupBarrier();
      scan[lid] = scan[lid] + v;
    }
    workgroupBarrier();
    if (take) { entries[j * p.stride + count + scan[lid] - 1u] = vec2<u32>(block, select(p.BS, p.partial, i == p.n)); }
    count = count + scan[WG - 1u];
    workgroupBarrier();
  }
  atomicAdd(&dropped, gone);
  workgroupBarrier();
  if (lid == 0u) {
    seqs[j] = vec2<u32>(j * p.stride, count);
    evicted[j] = select(evicted[j], 0u, p.fresh0 == 0u) + atomicLoad(&dropped);
  }
}
