// Group abstracts (issue 13 §4): a group's min/max abstract is the element-wise min of its
// chunks' mins and max of their maxes, so its Quest score bounds every chunk's score in it
// from above, and scoring may skip a whole group. Folds chunks just sealed into their group:
// f16 values pass through f32 exactly, so min/max need no rounding.
//   src_min, src_max: (chunks, KV, D/2) f16 pairs, the seal's abstracts
//   jobs: (n) vec4<u32> (group slot, first src chunk, src chunks, init): the chunks
//         [first, first + count) of src all belong to the group; init 1 starts the group
//         from them (its first chunk is among them), 0 widens what it holds
//   dst_min, dst_max: (groups, KV, D/2) f16 pairs
// Workgroup (job, kv head); thread j covers the element pair (2j, 2j+1). One job per group
// and dispatch, so no two workgroups write the same group.
struct Params { KV: u32, D: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src_min: array<u32>;
@group(0) @binding(2) var<storage, read> src_max: array<u32>;
@group(0) @binding(3) var<storage, read> jobs: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> dst_min: array<u32>;
@group(0) @binding(5) var<storage, read_write> dst_max: array<u32>;

override WG: u32 = 64;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let job = jobs[wid.x];
  let kvh = wid.y;
  let half_d = p.D / 2u;
  for (var j = lid; j < half_d; j = j + WG) {
    let o = (job.x * p.KV + kvh) * half_d + j;
    var lo = vec2<f32>(3.0e38);
    var hi = vec2<f32>(-3.0e38);
    if (job.w == 0u) {
      lo = unpack2x16float(dst_min[o]);
      hi = unpack2x16float(dst_max[o]);
    }
    for (var c = 0u; c < job.z; c = c + 1u) {
      let s = ((job.y + c) * p.KV + kvh) * half_d + j;
      lo = min(lo, unpack2x16float(src_min[s]));
      hi = max(hi, unpack2x16float(src_max[s]));
    }
    dst_min[o] = pack2x16float(lo);
    dst_max[o] = pack2x16float(hi);
  }
}
