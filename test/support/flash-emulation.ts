// kernels/attn_prefill_mx.wgsl (and attn_prefill_fa.wgsl) with Dawn's subgroup matrices replaced
// by plain WGSL, so that its tiling, lazy online softmax, rescaling and WINDOW state run (and are
// checked) on a device without the feature, such as lavapipe. Test-only; the same idea as
// sgmat-emulation.ts (gemm_sgmat), with the kernel's own operands:
//   left  (row-major) from qs (Q) or ps (P):  A(r, k) = arr[o + r * s + k]
//   right (col-major) from ks (K^T):          B(k, n) = ks[o + n * s + k]
//   right (row-major) from vs (V):            B(k, n) = vs[o + k * s + n]
//   KDIRECT: right from the pools (f16):      B(k, n) = kpool[o + n * s + k], vpool[o + k * s + n]
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

// The right operand: K^T and V from the staged tiles, or (KDIRECT) straight from the pools.
const rightStaged = `
fn emu_b(m: EmuR, k: u32, n: u32) -> f32 {
  if (m.a == 0u) { return f32(ks[m.o + n * m.s + k]); }
  return f32(vs[m.o + k * m.s + n]);
}
`
const rightDirect = `
fn emu_b(m: EmuR, k: u32, n: u32) -> f32 {
  if (m.a == 0u) { return f32(kpool[m.o + n * m.s + k]); }
  return f32(vpool[m.o + k * m.s + n]);
}
`

// attn_prefill_fa joins a row's two halves with subgroupShuffleXor over the emulated subgroups
// of SG lanes (lavapipe's own subgroups are 8 lanes): through workgroup memory, between
// barriers (the kernel calls it in uniform control flow).
const emulationShuffle = `
override EMU_N: u32 = SG * NSG;
var<workgroup> emu_x: array<f32, EMU_N>;
var<private> emu_lid: u32;
fn emu_xor(x: f32, m: u32) -> f32 {
  workgroupBarrier();
  emu_x[emu_lid] = x;
  workgroupBarrier();
  let y = emu_x[emu_lid ^ m];
  workgroupBarrier();
  return y;
}
`

/** attn_prefill_mx's source (as Pipelines.source gives it) with subgroup matrices emulated. */
export const emulateFlashAttention = (source: string): string => {
  const left = "subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>"
  const right = "subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, "
  const result = "subgroup_matrix_result<f32, 16, 16>"
  const lit = (s: string) => s.replace(/[<>(),&]/g, (c) => `\\${c}`)
  let s = replace(source, /enable chromium_experimental_subgroup_matrix;/, "")
  s = replace(s, new RegExp(lit(`${left}(&qs, `), "g"), "emu_left(0u, ")
  s = replace(s, new RegExp(lit(`${left}(&ps, `), "g"), "emu_left(1u, ")
  const direct = /var<storage, read> kpool: array<f16>/.test(s)
  s = replace(s, new RegExp(lit(`${right}col_major>(${direct ? "&kpool" : "&ks"}, `), "g"), "emu_right(0u, ")
  s = replace(s, new RegExp(lit(`${right}row_major>(${direct ? "&vpool" : "&vs"}, `), "g"), "emu_right(1u, ")
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
  s = replace(s, /(fn main\([\s\S]*?\n\) \{)/, "$1\n  let sg = lid / SG;\n  let lane = lid % SG;\n  emu_lane = lane;\n  emu_lid = lid;\n  emu_zero = select(0u, 1u, p.M == 0xffffffffu);")
  const shuffles = /subgroupShuffleXor\(/.test(s)
  if (shuffles) s = s.replace(/subgroupShuffleXor\(/g, "emu_xor(")
  else s = s.replace("\n  emu_lid = lid;", "")
  return s + emulation + (direct ? rightDirect : rightStaged) + (shared ? emulationShared : "") + (shuffles ? emulationShuffle : "")
}

/**
 * The byte size of each workgroup variable of a kernel's text, its override sizes evaluated with
 * `constants` (over the declared defaults). The matrix kernels keep every one a multiple of 16
 * bytes: on an H100 (driver 580.159) attn_prefill_mx with a 4-byte u32 among its matrix arrays
 * read and wrote garbage through its matrix loads and stores, which no emulation reproduces.
 */
export const workgroupVariableBytes = (source: string, constants: Readonly<Record<string, number>>): Record<string, number> => {
  const values = new Map<string, number>()
  for (const [, name, expr] of source.matchAll(/^\s*(?:override|const) (\w+): u32 = ([^;]+);/gm)) {
    const value = constants[name!] ?? evaluate(expr!, values)
    values.set(name!, value)
  }
  const scalar: Record<string, number> = { f16: 2, f32: 4, u32: 4, i32: 4 }
  const bytes = (type: string): number => {
    const array = /^array<(\w+), (\w+)>$/.exec(type)
    if (array) return scalar[array[1]!]! * (values.get(array[2]!) ?? Number(array[2]!.replace(/u$/, "")))
    const vec = /^vec(\d)<(\w+)>$/.exec(type)
    if (vec) return Number(vec[1]) * scalar[vec[2]!]!
    if (type in scalar) return scalar[type]!
    throw new Error(`workgroupVariableBytes: type ${type} not handled`)
  }
  return Object.fromEntries([...source.matchAll(/^var<workgroup> (\w+): ([^;]+);/gm)].map(([, name, type]) => [name!, bytes(type!.trim())]))
}

/** An override's initializer: u32 literals, names already known, + - * / and parentheses. */
const evaluate = (expr: string, values: ReadonlyMap<string, number>): number => {
  const text = expr.replace(/(\d+)u\b/g, "$1").replace(/[A-Za-z_]\w*/g, (name) => {
    const v = values.get(name)
    if (v === undefined) throw new Error(`workgroupVariableBytes: ${name} unknown in ${expr}`)
    return String(v)
  })
  if (!/^[\d\s+\-*/()]+$/.test(text)) throw new Error(`workgroupVariableBytes: cannot evaluate ${expr}`)
  return Math.floor(Function(`"use strict"; return (${text})`)() as number)
}
