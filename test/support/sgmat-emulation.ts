// The matrix-unit kernels (kernels/gemm_sgmat.wgsl, gemm_skinny.wgsl) with Dawn's subgroup
// matrices replaced by plain WGSL, so that their tiling, staging, double buffering and
// epilogues run (and are checked) on a device without the feature, such as lavapipe. Test-only. The emulation follows the WGSL semantics the
// kernel relies on: a left matrix loaded row-major is A(r, k) = p[o + r * s + k], a right
// matrix loaded column-major is B(k, n) = p[o + n * s + k], a result stored row-major is
// C(r, n) -> p[o + r * s + n]; lane l of a subgroup of SG lanes holds the result elements
// e = l + j * SG (row e / 16, column e % 16). It reads the staged tiles at the multiply, not
// at the load, which the kernel allows (no stage is written between the two).

const emulation = (left: string, right: string) => `
struct EmuL { o: u32, s: u32 }
struct EmuR { o: u32, s: u32 }
struct EmuAcc { v: array<f32, 16> }
var<private> emu_lane: u32;
fn emu_left(o: u32, s: u32) -> EmuL { return EmuL(o, s); }
fn emu_right(o: u32, s: u32) -> EmuR { return EmuR(o, s); }
fn emu_mma(a: EmuL, b: EmuR, c: EmuAcc) -> EmuAcc {
  var r = c;
  for (var j = 0u; j < 256u / SG + p._a; j = j + 1u) {
    let e = emu_lane + j * SG;
    var s = 0.0;
    for (var k = 0u; k < 16u + p._a; k = k + 1u) {
      s = s + f32(${left}[a.o + (e / 16u) * a.s + k]) * f32(${right}[b.o + (e % 16u) * b.s + k]);
    }
    r.v[j] = r.v[j] + s;
  }
  return r;
}
fn emu_store(o: u32, c: EmuAcc, s: u32) {
  for (var j = 0u; j < 256u / SG + p._a; j = j + 1u) {
    let e = emu_lane + j * SG;
    cs[o + (e / 16u) * s + e % 16u] = c.v[j];
  }
}
`

const replaceOnce = (text: string, pattern: RegExp, by: string): string => {
  if (!pattern.test(text)) throw new Error(`sgmat emulation: ${pattern} not found in the kernel`)
  return text.replace(pattern, by)
}

/**
 * The kernel's source (as Pipelines.source gives it) with subgroup matrices emulated: left
 * matrices are loaded from the array `left`, right ones from `right` (gemm_sgmat, the default:
 * its staged X tiles xs and W in storage, w; gemm_skinny: xh and w in storage), results
 * stored to `cs`.
 */
export const emulateSubgroupMatrices = (source: string, left = "xs", right = "w"): string => {
  let s = replaceOnce(source, /enable chromium_experimental_subgroup_matrix;/, "")
  s = replaceOnce(s, /subgroup_matrix_result<f32, 16, 16>\(\)/g, "EmuAcc()")
  s = replaceOnce(s, new RegExp(`subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>\\(&${left}, `, "g"), "emu_left(")
  s = replaceOnce(s, new RegExp(`subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>\\(&${right}, `, "g"), "emu_right(")
  s = replaceOnce(s, /subgroupMatrixMultiplyAccumulate\(/g, "emu_mma(")
  s = replaceOnce(s, /subgroupMatrixStore<row_major>\(&cs, /g, "emu_store(")
  // Subgroups of exactly SG lanes, whatever the device's own size.
  s = replaceOnce(s, /@builtin\(subgroup_id\) sg: u32,\s*@builtin\(subgroup_invocation_id\) lane: u32,/, "")
  s = replaceOnce(s, /(fn main\([\s\S]*?\n\) \{)/, "$1\n  let sg = lid / SG;\n  let lane = lid % SG;\n  emu_lane = lane;")
  return s + emulation(left, right)
}
