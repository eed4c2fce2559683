// Bandwidth ceiling: dst[i] = src[i] over vec4<u32>, grid-stride so any size fits.
struct Params { n: u32, stride: u32, _a: u32, _b: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<u32>>;

override WG: u32 = 256;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  for (var i = gid.x; i < p.n; i = i + p.stride) {
    dst[i] = src[i];
  }
}
