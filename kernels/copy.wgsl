// Bandwidth ceilings: dst[i] = src[i] over vec4<u32> (read + write), or with READ a pure
// read (an xor of everything, stored only when it hits an impossible value so that the
// loads cannot be optimised away). Grid-stride, so any size fits.
struct Params { n: u32, stride: u32, _a: u32, _b: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<u32>>;

override WG: u32 = 256;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
#if READ
  var acc = vec4<u32>(0u);
  for (var i = gid.x; i < p.n; i = i + p.stride) {
    acc = acc ^ src[i];
  }
  if (acc.x == 0xdeadbeefu && acc.y == 0x01234567u) { dst[gid.x] = acc; }
#else
  for (var i = gid.x; i < p.n; i = i + p.stride) {
    dst[i] = src[i];
  }
#endif
}
