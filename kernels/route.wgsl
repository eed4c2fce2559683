// The GPU-side split of a tiered layer's chunk choice into hits and misses, so that a
// pipelined decode step attends the resident chunks without the host reading the choice
// first: a chunk whose slot map entry names a block is a hit and gets its blocks'
// attn_decode entries, in choice order (as the host's plan writes them); a chunk with no
// slot is counted as a miss. The layer's tail follows, then (first entry, count) in seqs.
//   selection: (count) vec2<u32> (chunk, _) from select.wgsl;  chosen: (1) vec2<u32> its
//              (0, length), as select.wgsl wrote it: a grouped choice listed on the GPU may
//              hold fewer than `count` (its upper bound); the route takes the smaller
//   slot_map:  (layers, maxChunks) u32, the entry of the chunk's cache slot's first block,
//              NONE if not resident: bits << 24 | block, bits 0 for fp16 slots (block: the pool
//              block) and 8 or 4 for decode's compressed slots (block: slot * slot_blocks)
//   entries:   (E) vec2<u32> (block, tokens | bits << 16), attn_decode's form (bits 0: fp16);
//              seqs: (1) vec2<u32> (0, entry count)
//   misses:    (4) u32, [0] the chunks of the choice that are not resident, [1] the choice's length
// One workgroup; thread i takes a contiguous run of the choice, so that a scan of the
// threads' hit counts gives every hit its place.
struct Params { count: u32, slot_blocks: u32, BS: u32, map_base: u32, sealed: u32, tokens: u32, tail_blocks: u32, pad: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> selection: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> slot_map: array<u32>;
@group(0) @binding(3) var<storage, read_write> entries: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read_write> seqs: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read_write> misses: array<u32>;
@group(0) @binding(6) var<storage, read> chosen: array<vec2<u32>>;

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;

var<workgroup> scan: array<u32, 256>;
var<workgroup> missed: atomic<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  if (lid == 0u) { atomicStore(&missed, 0u); }
  let count = min(p.count, chosen[0].y);
  let per = (count + WG - 1u) / WG;
  let i0 = min(lid * per, count);
  let i1 = min(i0 + per, count);
  var hits = 0u;
  for (var i = i0; i < i1; i = i + 1u) {
    if (slot_map[p.map_base + selection[i].x] != NONE) { hits = hits + 1u; }
  }
  scan[lid] = hits;
  workgroupBarrier();
  if (i1 - i0 > hits) { atomicAdd(&missed, i1 - i0 - hits); }
  // Inclusive scan of the hit counts (Hillis-Steele).
  for (var step = 1u; step < WG; step = step * 2u) {
    var v = 0u;
    if (lid >= step) { v = scan[lid - step]; }
    workgroupBarrier();
    scan[lid] = scan[lid] + v;
    workgroupBarrier();
  }
  var e = (scan[lid] - hits) * p.slot_blocks;
  for (var i = i0; i < i1; i = i + 1u) {
    let slot = slot_map[p.map_base + selection[i].x];
    if (slot == NONE) { continue; }
    let block = slot & 0xffffffu;
    let tokens = p.BS | ((slot >> 24u) << 16u);
    for (var j = 0u; j < p.slot_blocks; j = j + 1u) {
      entries[e] = vec2<u32>(block + j, tokens);
      e = e + 1u;
    }
  }
  let chunked = scan[WG - 1u] * p.slot_blocks;
  let tail = (p.tokens - p.sealed + p.BS - 1u) / p.BS;
  for (var j = lid; j < tail; j = j + WG) {
    let t = p.sealed + j * p.BS;
    entries[chunked + j] = vec2<u32>((t / p.BS) % p.tail_blocks, min(p.BS, p.tokens - t));
  }
  workgroupBarrier();
  if (lid == 0u) {
    seqs[0] = vec2<u32>(0u, chunked + tail);
    misses[0] = atomicLoad(&missed);
    misses[1] = count;
  }
}
