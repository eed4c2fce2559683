// The interface of the prefill attention kernels (attn_prefill.wgsl, attn_prefill_sg.wgsl):
//   q:     (M, H, D) f32 (RoPE applied);  out: (M, H, D) f32
//   kpool, vpool: (blocks, KV, BS, D) f16 packed in u32 pairs;  table: logical -> physical block
// and the K/V tile load. The including kernel declares BK (keys per tile), D, and the
// workgroup arrays ks and vs of BK * D / 2 words.
struct Params { M: u32, H: u32, KV: u32, BS: u32, pos0: u32, scale: f32, _a: u32, _b: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kpool: array<u32>;
@group(0) @binding(3) var<storage, read> vpool: array<u32>;
@group(0) @binding(4) var<storage, read> table: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

// Keys kt .. kt + BK - 1 of KV head kvh into ks / vs (zeros past kend), by all 256 threads.
fn load_tile(lid: u32, kt: u32, kend: u32, kvh: u32) {
  let half_d = D / 2u;
  for (var i = lid; i < BK * half_d; i = i + 256u) {
    let pos = kt + i / half_d;
    var kw = 0u;
    var vw = 0u;
    if (pos < kend) {
      let idx = ((table[pos / p.BS] * p.KV + kvh) * p.BS + pos % p.BS) * half_d + i % half_d;
      kw = kpool[idx];
      vw = vpool[idx];
    }
    ks[i] = kw;
    vs[i] = vw;
  }
}
