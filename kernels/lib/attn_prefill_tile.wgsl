// The K/V tile load of the prefill attention kernels that stage keys through workgroup
// memory (attn_prefill.wgsl, attn_prefill_sg.wgsl). The including kernel declares BK (keys
// per tile), D, and the workgroup arrays ks and vs of BK * D / 2 words.
// Keys kt .. kt + BK - 1 of KV head kvh into ks / vs (zeros past kend), by all 256 threads.
fn load_tile(lid: u32, kt: u32, kend: u32, kvh: u32) {
  let half_d = D / 2u;
  for (var i = lid; i < BK * half_d; i = i + 256u) {
    let pos = kt + i / half_d;
    var kw = 0u;
    var vw = 0u;
    if (pos < kend) {
      let idx = kv_word(pos, kvh) + i % half_d;
      kw = kpool[idx];
      vw = vpool[idx];
    }
    ks[i] = kw;
    vs[i] = vw;
  }
}
