// Kernel texts for bench/flash-diag.ts: the micro products' shader, attn_prefill_mx with one
// half emulated in plain WGSL, and the kernel with 549bf3c's 4-byte flag. Pure text; no device
// needed. (The first run also tried constant-sized arrays and a barrier before P V: no change.)
const flagDecl = (m: Micro) => `var<workgroup> flag: ${m.flag!.type};\n`

export interface Micro {
  readonly right: "row" | "col" // V staged row-major (keys x 16, stride 24) or transposed (16 x keys, stride 32)
  readonly store: "storage" | "scratch" // result straight to storage, or to workgroup f32 then copied by lanes
  readonly acc: "zero" | "load" // accumulator constructed as zero, or loaded from workgroup (C0)
  readonly sizes: "const" | "override"
  readonly rescale?: boolean // store, scale row r by (r + 1) / 16, reload, add A B again
  readonly chain?: boolean // mma(a1, b1, mma(a0, b0, o)) as the kernel, else two statements
  /** A workgroup flag read through workgroupUniformLoad, as the kernel's `rescale`: its type, declared before or after the arrays. */
  readonly flag?: { readonly type: "u32" | "vec4<u32>"; readonly first: boolean }
  /** As the kernel's key loop: staging (P by its row owners, through a data-dependent branch), loads and product repeated this many times, a barrier at each top. */
  readonly loop?: number
}

export const microShader = (m: Micro): string => {
  const size = (name: string, value: number) => (m.sizes === "const" ? `const ${name}: u32 = ${value}u;` : `override ${name}: u32 = ${value}u * ONE;`)
  const ld = m.right === "row" ? 24 : 32
  const b0 = m.right === "row" ? "subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&wb, 0u, 24u)" : "subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&wb, 0u, 32u)"
  const b1 = m.right === "row" ? "subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&wb, 16u * 24u, 24u)" : "subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&wb, 16u, 32u)"
  // With a loop the accumulator starts at zero (C0 is not staged).
  const init = m.acc === "zero" || m.loop ? "subgroup_matrix_result<f32, 16, 16>()" : "subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ws, sg * 256u, 16u)"
  const product = (o: string) =>
    m.chain === false ? `${o} = subgroupMatrixMultiplyAccumulate(a0, b0, ${o});\n  ${o} = subgroupMatrixMultiplyAccumulate(a1, b1, ${o});` : `${o} = subgroupMatrixMultiplyAccumulate(a1, b1, subgroupMatrixMultiplyAccumulate(a0, b0, ${o}));`
  return `enable f16;
enable chromium_experimental_subgroup_matrix;
diagnostic(off, chromium.subgroup_matrix_uniformity);
@group(0) @binding(0) var<storage, read> inp: array<f32>;
@group(0) @binding(1) var<storage, read_write> res: array<f32>;
override ONE: u32 = 1u;
override SG: u32 = 32u;
${size("WA", 4 * 16 * 40)}
${size("WB", 32 * ld)}
${size("WS", 4 * 256)}
${m.flag?.first ? flagDecl(m) : ""}var<workgroup> wa: array<f16, WA>;
var<workgroup> wb: array<f16, WB>;
var<workgroup> ws: array<f32, WS>;
${m.flag && !m.flag.first ? flagDecl(m) : ""}@compute @workgroup_size(SG * 4u)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
  ${m.loop ? `var o = ${init};\n  for (var t = 0u; t < ${m.loop}u; t = t + 1u) {\n  workgroupBarrier();` : ""}
  if (lane < 16u) {
    for (var k = 0u; k < 32u; k = k + 1u) {
      let v = inp[lane * 32u + k];
      if (v > 0.5) { wa[sg * 640u + lane * 40u + k] = f16(v); } else { wa[sg * 640u + lane * 40u + k] = f16(v); }
    }
  }
  for (var i = lid; i < 512u; i = i + SG * 4u) {
    let key = i / 16u;
    let n = i % 16u;
    ${m.right === "row" ? "wb[key * 24u + n] = f16(inp[512u + i]);" : "wb[n * 32u + key] = f16(inp[512u + i]);"}
  }
  ${m.loop ? "" : "for (var e = lane; e < 256u; e = e + SG) { ws[sg * 256u + e] = inp[1024u + e]; }"}
  ${m.flag ? `if (lid == 0u) { flag${m.flag.type === "u32" ? "" : ".x"} = 7u; }\n  if (workgroupUniformLoad(&flag)${m.flag.type === "u32" ? "" : ".x"} != 7u) { return; }` : "workgroupBarrier();"}
  let a0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&wa, sg * 640u, 40u);
  let a1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&wa, sg * 640u + 16u, 40u);
  let b0 = ${b0};
  let b1 = ${b1};
  ${m.loop ? "" : `var o = ${init};`}
  ${product("o")}
  ${m.loop ? "}" : ""}
  ${
    m.rescale
      ? `workgroupBarrier();
  subgroupMatrixStore<row_major>(&ws, sg * 256u, o, 16u);
  workgroupBarrier();
  for (var e = lane; e < 256u; e = e + SG) { ws[sg * 256u + e] = ws[sg * 256u + e] * f32(e / 16u + 1u) / 16.0; }
  workgroupBarrier();
  o = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ws, sg * 256u, 16u);
  workgroupBarrier();
  ${product("o")}`
      : ""
  }
  ${
    m.store === "storage"
      ? "subgroupMatrixStore<row_major>(&res, sg * 256u, o, 16u);"
      : `workgroupBarrier();
  subgroupMatrixStore<row_major>(&ws, sg * 256u, o, 16u);
  workgroupBarrier();
  for (var e = lane; e < 256u; e = e + SG) { res[sg * 256u + e] = ws[sg * 256u + e]; }`
  }
}
`
}

// The emulation of test/support/flash-emulation.ts, applied to one half of the kernel only.
const emulationHelpers = `
struct EmuL { a: u32, o: u32, s: u32 }
struct EmuR { a: u32, o: u32, s: u32 }
struct EmuAcc { v: array<f32, 16> }
var<private> emu_lane: u32;
fn emu_left(a: u32, o: u32, s: u32) -> EmuL { return EmuL(a, o, s); }
fn emu_right(a: u32, o: u32, s: u32) -> EmuR { return EmuR(a, o, s); }
fn emu_a(m: EmuL, r: u32, k: u32) -> f32 {
  if (m.a == 0u) { return f32(qs[m.o + r * m.s + k]); }
  return f32(ps[m.o + r * m.s + k]);
}
fn emu_b(m: EmuR, k: u32, n: u32) -> f32 {
  if (m.a == 0u) { return f32(ks[m.o + n * m.s + k]); }
  return f32(vs[m.o + k * m.s + n]);
}
fn emu_mma(a: EmuL, b: EmuR, c: EmuAcc) -> EmuAcc {
  var r = c;
  for (var j = 0u; j < 256u / SG; j = j + 1u) {
    let e = emu_lane + j * SG;
    var s = 0.0;
    for (var k = 0u; k < 16u; k = k + 1u) { s = s + emu_a(a, e / 16u, k) * emu_b(b, k, e % 16u); }
    r.v[j] = r.v[j] + s;
  }
  return r;
}
fn emu_load(o: u32, s: u32) -> EmuAcc {
  var r = EmuAcc();
  for (var j = 0u; j < 256u / SG; j = j + 1u) { let e = emu_lane + j * SG; r.v[j] = ss[o + (e / 16u) * s + e % 16u]; }
  return r;
}
fn emu_store(o: u32, c: EmuAcc, s: u32) {
  for (var j = 0u; j < 256u / SG; j = j + 1u) { let e = emu_lane + j * SG; ss[o + (e / 16u) * s + e % 16u] = c.v[j]; }
}
`
const sub = (text: string, pattern: RegExp, by: string): string => {
  if (!pattern.test(text)) throw new Error(`flash-diag: ${pattern} not found in the kernel`)
  return text.replace(pattern, by)
}
const withLane = (s: string) => sub(s, /(fn main\([\s\S]*?\n\) \{)/, "$1\n  emu_lane = lane;") + emulationHelpers

/** Register form with Q K^T emulated (P V stays on the matrix units). */
export const emulateQk = (src: string): string => {
  let s = sub(src, /subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>\(&qs, /g, "emu_left(0u, ")
  s = sub(s, /subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>\(&ks, /g, "emu_right(0u, ")
  s = sub(s, /var (s[01]) = subgroup_matrix_result<f32, 16, 16>\(\);/g, "var $1 = EmuAcc();")
  s = sub(s, /(s[01]) = subgroupMatrixMultiplyAccumulate\(a, (b[01]), (s[01])\);/g, "$1 = emu_mma(a, $2, $3);")
  s = sub(s, /subgroupMatrixStore<row_major>\(&ss, (sc(?: \+ 16u)?), (s[01]), BK\);/g, "emu_store($1, $2, BK);")
  return withLane(s)
}

/** Register form with P V emulated (Q K^T stays on the matrix units). */
export const emulatePv = (src: string): string => {
  let s = sub(src, /subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>\(&ps, /g, "emu_left(1u, ")
  s = sub(s, /subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>\(&vs, /g, "emu_right(1u, ")
  s = sub(s, /var (o\d) = subgroup_matrix_result<f32, 16, 16>\(\);/g, "var $1 = EmuAcc();")
  s = sub(s, /(o\d) = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>\(&ss, /g, "$1 = emu_load(")
  s = sub(s, /subgroupMatrixStore<row_major>\(&ss, sc, (o\d), 16u\)/g, "emu_store(sc, $1, 16u)")
  s = sub(s, /subgroupMatrixMultiplyAccumulate\(p1, v1, subgroupMatrixMultiplyAccumulate\(p0, v0, (o\d)\)\)/g, "emu_mma(p1, v1, emu_mma(p0, v0, $1))")
  return withLane(s)
}

/** The kernel as it was at 549bf3c in one respect: its rescale flag a 4-byte u32. */
export const u32Flag = (src: string): string => {
  let s = sub(src, /var<workgroup> rescale: vec4<u32>;/, "var<workgroup> rescale: u32;")
  s = sub(s, /rescale\.x = /g, "rescale = ")
  return sub(s, /workgroupUniformLoad\(&rescale\)\.x/, "workgroupUniformLoad(&rescale)")
}

/**
 * The kernel with parts taken out, for timing only (its results are wrong): "softmax" (no row
 * owner: P and l never written), "qk" (no Q K^T products), "pv" (no P V products).
 */
export const without = (src: string, parts: ReadonlyArray<"softmax" | "qk" | "pv">): string => {
  let s = src
  if (parts.includes("softmax")) s = sub(s, /let owner = lane < 16u;/, "let owner = lane > 1000u;")
  if (parts.includes("qk")) s = sub(s, /s([01]) = subgroupMatrixMultiplyAccumulate\(a, b[01], s[01]\);/g, "")
  if (parts.includes("pv")) s = sub(s, /(o\d) = subgroupMatrixMultiplyAccumulate\(p1, v1, subgroupMatrixMultiplyAccumulate\(p0, v0, o\d\)\);/g, "")
  return s
}

/**
 * attn_prefill_fa (kernels/attn_prefill_fa.wgsl) with parts taken out, for timing only (the
 * results are wrong): the softmax's two loops over a tile's keys, the Q K^T products, the P V
 * products (the compiler may drop the loads that fed them too).
 */
export const withoutSplit = (src: string, parts: ReadonlyArray<"softmax" | "qk" | "pv">): string => {
  let s = src
  if (parts.includes("softmax")) s = sub(s, /for \(var j = 0u; j < BK \/ 2u; j = j \+ 1u\) \{/g, "for (var j = 0u; j < 0u; j = j + 1u) {")
  if (parts.includes("qk")) s = sub(s, /s([0-3]) = subgroupMatrixMultiplyAccumulate\(a, b[0-3], s[0-3]\);/g, "")
  if (parts.includes("pv")) s = sub(s, /(o\d) = subgroupMatrixMultiplyAccumulate\(p[13], v[13], .*\);/g, "")
  return s
}
