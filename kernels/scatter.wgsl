// The upload ring's scatter: one flush's staged bytes, landed on the GPU by one copy, are
// moved to their destinations by this pass instead of one copyBufferToBuffer each. Dawn
// puts a write-after-write barrier between two copies into the same buffer, so a layer's
// ~110 chunk-half copies into its K and V pools ran one after another; a dispatch is one
// synchronisation scope, so every piece moves at once.
//   table: (pieces) vec4<u32> (source word, destination word, words, _); this dispatch takes
//          pieces [first, first + count), one workgroup each
//   src:   the landed staging bytes, u32 words;  dst: the destination buffer, u32 words
struct Params { first: u32, count: u32, _a: u32, _b: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> src: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<u32>;

const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  if (wg.x >= p.count) { return; }
  let e = table[p.first + wg.x];
  for (var i = lid; i < e.z; i = i + WG) {
    dst[e.y + i] = src[e.x + i];
  }
}
