// kernels/attn_prefill_mx.wgsl with Dawn's subgroup matrices replaced by plain WGSL, so that
// its tiling, lazy online softmax, rescaling and WINDOW state run (and are checked) on a
// device without the feature, such as lavapipe. Test-only; the same idea as
// sgmat-emulation.ts (gemm_sgmat), with the kernel's own operands:
//   left  (row-major) from qs (Q) or ps (P):  A(r, k) = arr[o + r * s + k]
//   right (col-major) from ks (K^T):          B(k, n) = ks[o + n * s + k]
//   right (col-major) from vt (V transposed): B(k, n) = vt[o + n * s + k]
//   result load / store (row-major) in ss:    C(r, n) <-> ss[o + r * s + n]  (and os, OSHARED)
// Lane l of a subgroup of SG lanes holds the result elements e = l + j * SG (row e / 16,
// column e % 16). Left and right operands are read at the multiply, not at the load, which
// the kernel allows (no staged tile is written between the two).

const emulation = `
struct EmuL { a: u32, o: u32, s: u32 }
struct EmuR { a: u32, o: u32, s: u32 }
struct EmuAcc { v: array<f32, 16> }
var<private> emu_lane: u32;
var<private> emu_zero: u32;
fn emu_left(a: u32, o: u32, s: u32) -> EmuL { return EmuL(a, o, s); }
fn emu_right(a: u32, o: u32, s: u32) -> EmuR { return EmuR(a, o, s); }
fn emu_a(m: EmuL, r: u32, k: u32) -> f32 {
  if (m.a == 0u) { return f32(qs[m.o + r * m.s + k]); }
  return f32(ps[m.o + r * m.s + k]);
}
fn emu_b(m: EmuR, k: u32, n: u32) -> f32 {
  if (m.a == 0u) { return f32(ks[m.o + n * m.s + k]); }
  return f32(vt[m.o + n * m.s + k]);
}
fn emu_mma(a: EmuL, b: EmuR, c: EmuAcc) -> EmuAcc {
  var r = c;
  for (var j = 0u; j < 256u / SG + emu_zero; j = j + 1u) {
    let e = emu_lane + j * SG;
    var s = 0.0;
    for (var k = 0u; k < 16u + emu_zero; k = k + 1u) { s = s + emu_a(a, e / 16u, k) * emu_b(b, k, e % 16u); }
    r.v[j] = r.v[j] + s;
  }
  return r;
}
fn emu_load(o: u32, s: u32) -> EmuAcc {
  var r = EmuAcc();
  for (var j = 0u; j < 256u / SG + emu_zero; j = j + 1u) {
    let e = emu_lane + j * SG;
    r.v[j] = ss[o + (e / 16u) * s + e % 16u];
  }
  return r;
}
fn emu_store(o: u32, c: EmuAcc, s: u32) {
  for (var j = 0u; j < 256u / SG + emu_zero; j = j + 1u) {
    let e = emu_lane + j * SG;
    ss[o + (e / 16u) * s + e % 16u] = c.v[j];
  }
}
`

const emulationShared = `
fn emu_load_os(o: u32, s: u32) -> EmuAcc {
  var r = EmuAcc();
  for (var j = 0u; j < 256u / SG + emu_zero; j = j + 1u) {
    let e = emu_lane + j * SG;
    r.v[j] = os[o + (e / 16u) * s + e % 16u];
  }
  return r;
}
fn emu_store_os(o: u32, c: EmuAcc, s: u32) {
  for (var j = 0u; j < 256u / SG + emu_zero; j = j + 1u) {
    let e = emu_lane + j * SG;
    os[o + (e / 16u) * s + e % 16u] = c.v[j];
  }
}
`

const replace = (text: string, pattern: RegExp, by: string): string => {
  if (!pattern.test(text)) throw new Error(`flash emulation: ${pattern} not found in the kernel`)
  return text.replace(pattern, by)
}

/** attn_prefill_mx's source (as Pipelines.source gives it) with subgroup matrices emulated. */
export const emulateFlashAttention = (source: string): string => {
  const left = "subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>"
  const right = "subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, "
  const result = "subgroup_matrix_result<f32, 16, 16>"
  const lit = (s: string) => s.replace(/[<>(),&]/g, (c) => `\\${c}`)
  let s = replace(source, /enable chromium_experimental_subgroup_matrix;/, "")
  s = replace(s, new RegExp(lit(`${left}(&qs, `), "g"), "emu_left(0u, ")
  s = replace(s, new RegExp(lit(`${left}(&ps, `), "g"), "emu_left(1u, ")
  s = replace(s, new RegExp(lit(`${right}col_major>(&ks, `), "g"), "emu_right(0u, ")
  s = replace(s, new RegExp(lit(`${right}col_major>(&vt, `), "g"), "emu_right(1u, ")
  s = s.replace(new RegExp(lit(`subgroupMatrixLoad<${result}, row_major>(&ss, `), "g"), "emu_load(") // none with OSHARED
  s = replace(s, new RegExp(lit("subgroupMatrixStore<row_major>(&ss, "), "g"), "emu_store(")
  // OSHARED: O's blocks loaded from and stored to os.
  const shared = /var<workgroup> os:/.test(s)
  if (shared) {
    s = replace(s, new RegExp(lit(`subgroupMatrixLoad<${result}, row_major>(&os, `), "g"), "emu_load_os(")
    s = replace(s, new RegExp(lit("subgroupMatrixStore<row_major>(&os, "), "g"), "emu_store_os(")
  }
  s = replace(s, /subgroupMatrixMultiplyAccumulate\(/g, "emu_mma(")
  s = replace(s, new RegExp(lit(`${result}()`), "g"), "EmuAcc()")
  s = s.replace(new RegExp(lit(result), "g"), "EmuAcc") // declared types, if any are left
  // Subgroups of exactly SG lanes, whatever the device's own size; a zero the compiler cannot
  // fold keeps lavapipe from unrolling the emulated products.
  s = replace(s, /@builtin\(subgroup_id\) sg: u32,\s*@builtin\(subgroup_invocation_id\) lane: u32,/, "")
  s = replace(s, /(fn main\([\s\S]*?\n\) \{)/, "$1\n  let sg = lid / SG;\n  let lane = lid % SG;\n  emu_lane = lane;\n  emu_zero = select(0u, 1u, p.M == 0xffffffffu);")
  return s + emulation + (shared ? emulationShared : "")
}
