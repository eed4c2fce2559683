// Causal prefill attention on the GPU's matrix units (Dawn's subgroup matrices, f16 x f16 ->
// f32 16x16x16): the contract, bindings and WINDOW mode of attn_prefill.wgsl
// (lib/attn_prefill_io.wgsl), but a workgroup owns ROWS = 16 * NSG rows (query,
// head-in-group) of one kv head, 16 per subgroup, so every K/V tile staged in workgroup
// memory serves all G query heads. Per tile of BK = 32 keys a subgroup computes its 16 x 32
// scores S = Q K^T on the matrix units (Q staged once as f16, pre-scaled), the row owners
// (lanes 0..15) run the online softmax on S and write P as f16, and O += P V runs on the
// matrix units into D/16 accumulators held in registers for the whole pass: no score
// matrix beyond one tile exists in memory.
// The accumulators cannot be scaled row by row in registers, so the softmax is lazy: P is
// taken against a row's reference max m, which moves (and O is rescaled through workgroup
// memory) only when a tile's max exceeds m by more than TAU; P <= e^TAU stays well inside
// f16. m, l and O always describe the same sums, which is all the WINDOW state needs.
// The D/16 accumulators are eight named variables, each used under `if (D > 16 i)` (D is an
// override, so the branches are uniform), not an array: on an H100 (driver 580.159) the array
// version, indexed by a loop counter, returned NaN where the emulation matched the CPU.
// OSHARED keeps O in workgroup memory instead (16 x D f32 per subgroup, each block loaded,
// multiplied into and stored back every tile; rescaled in place): slower, but with no
// accumulator living across the key loop, the form llama.cpp's WebGPU flash attention uses; the
// device takes it only where the register form fails its check (engine/attn-check.ts).
// Offsets of matrix loads and stores derive only from subgroup_id and loop counters (Dawn
// requires them uniform within a subgroup); the workgroup is NSG subgroups of exactly SG
// lanes, SG the device's fixed subgroup size. Strides and offsets are multiples of 16 bytes.
enable f16;
enable chromium_experimental_subgroup_matrix;

#include lib/attn_prefill_io.wgsl

override G: u32 = 1;      // query heads per kv head
override D: u32 = 128;    // head dim: multiple of 16, at most 128
override SG: u32 = 32u;   // lanes per subgroup
override NSG: u32 = 4u;   // subgroups per workgroup
override PAD: u32 = 8u;   // halves after each staged row (0 or 8: rows stay 16-byte aligned)
const BK: u32 = 32u;      // keys per tile
const NEG: f32 = -3.0e38;
const TAU: f32 = 8.0;     // how far a tile's max may pass the reference max before O is rescaled

override ROWS: u32 = 16u * NSG;
override LD: u32 = D + PAD;          // row stride of qs and ks (halves)
override PLD: u32 = BK + PAD;        // row stride of ps (halves)
override QS_SIZE: u32 = ROWS * LD;
override KS_SIZE: u32 = BK * LD;
override VT_SIZE: u32 = D * BK;
override SS_SIZE: u32 = ROWS * BK;
override PS_SIZE: u32 = ROWS * PLD;

var<workgroup> qs: array<f16, QS_SIZE>;   // (ROWS, LD): the rows' queries * scale
var<workgroup> ks: array<f16, KS_SIZE>;   // (BK, LD): the tile's keys
var<workgroup> vt: array<f16, VT_SIZE>;   // (D, BK): the tile's values, transposed (V's columns as rows)
var<workgroup> ss: array<f32, SS_SIZE>;   // per subgroup (16, BK): scores; also a 16 x 16 scratch
var<workgroup> ps: array<f16, PS_SIZE>;   // per subgroup (16, PLD): probabilities
var<workgroup> row_a: array<f32, ROWS>;   // per row: the rescale factor of this tile, then 1 / l
var<workgroup> rescale: u32;              // some row of the workgroup moved its reference max
#if OSHARED
override OS_SIZE: u32 = ROWS * D;
var<workgroup> os: array<f32, OS_SIZE>;   // (ROWS, D): the unnormalized output sums
#endif

// The scalar sides of the accumulators' trips through this subgroup's scratch (16 x 16 f32 at
// ss[sc]), each between barriers: block b holds output columns 16 b .. 16 b + 15.
fn scale_scratch(sc: u32, sg: u32, lane: u32) {
  workgroupBarrier();
  for (var e = lane; e < 256u; e = e + SG) { ss[sc + e] = ss[sc + e] * row_a[sg * 16u + e / 16u]; }
  workgroupBarrier();
}

fn scratch_to_out(b: u32, sc: u32, sg: u32, lane: u32, row0: u32, total_rows: u32, kvh: u32) {
  workgroupBarrier();
  for (var e = lane; e < 256u; e = e + SG) {
    let r = row0 + sg * 16u + e / 16u;
    if (r < total_rows) { out[((r / G) * p.H + kvh * G + r % G) * D + b * 16u + e % 16u] = ss[sc + e] * row_a[sg * 16u + e / 16u]; }
  }
  workgroupBarrier();
}

#if WINDOW
fn state_to_scratch(b: u32, sc: u32, sg: u32, lane: u32, row0: u32, total_rows: u32, kvh: u32) {
  for (var e = lane; e < 256u; e = e + SG) {
    let r = min(row0 + sg * 16u + e / 16u, total_rows - 1u);
    ss[sc + e] = state[state_base(r / G, kvh * G + r % G) + b * 16u + e % 16u];
  }
  workgroupBarrier();
}

fn scratch_to_state(b: u32, sc: u32, sg: u32, lane: u32, row0: u32, total_rows: u32, kvh: u32) {
  workgroupBarrier();
  for (var e = lane; e < 256u; e = e + SG) {
    let r = row0 + sg * 16u + e / 16u;
    if (r < total_rows) { state[state_base(r / G, kvh * G + r % G) + b * 16u + e % 16u] = ss[sc + e]; }
  }
  workgroupBarrier();
}
#endif

@compute @workgroup_size(SG * NSG)
fn main(
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(subgroup_id) sg: u32,
  @builtin(subgroup_invocation_id) lane: u32,
) {
  let kvh = wid.y;
  let row0 = wid.x * ROWS;
  let total_rows = p.M * G;
  let threads = SG * NSG;
  let half_d = D / 2u;
  let last_row = min(row0 + ROWS, total_rows) - 1u;
  let kbeg = keys_begin();
  let kend = keys_end(p.pos0 + last_row / G + 1u);   // keys [kbeg, kend) are visible to some row

  for (var i = lid; i < ROWS * D; i = i + threads) {
    let rc = min(row0 + i / D, total_rows - 1u);
    let x = q[((rc / G) * p.H + kvh * G + rc % G) * D + i % D] * p.scale;
    qs[(i / D) * LD + i % D] = f16(clamp(x, -65504.0, 65504.0));
  }

  // Lanes 0..15 of a subgroup own its rows (row `lane` of its matrices) for the softmax.
  let owner = lane < 16u;
  let rr = sg * 16u + min(lane, 15u);
  let rc = min(row0 + rr, total_rows - 1u);
  let qi = rc / G;
  let h = kvh * G + rc % G;
  let qpos = p.pos0 + qi;
  let sc = sg * 16u * BK;       // this subgroup's scores (16, BK) and scratch (16, 16) in ss
  let pc = sg * 16u * PLD;      // this subgroup's probabilities in ps
  var mrun = NEG;
  var l = 0.0;
#if OSHARED
  let oc = sg * 16u * D;         // this subgroup's rows of os
  for (var e = lane; e < 16u * D; e = e + SG) { os[oc + e] = 0.0; }
#else
  var o0 = subgroup_matrix_result<f32, 16, 16>();
  var o1 = subgroup_matrix_result<f32, 16, 16>();
  var o2 = subgroup_matrix_result<f32, 16, 16>();
  var o3 = subgroup_matrix_result<f32, 16, 16>();
  var o4 = subgroup_matrix_result<f32, 16, 16>();
  var o5 = subgroup_matrix_result<f32, 16, 16>();
  var o6 = subgroup_matrix_result<f32, 16, 16>();
  var o7 = subgroup_matrix_result<f32, 16, 16>();
#endif

#if WINDOW
  if ((p.flags & FIRST) == 0u) {
    if (owner) {
      let sb = state_base(qi, h);
      mrun = state[sb + D];
      l = state[sb + D + 1u];
    }
#if OSHARED
    for (var e = lane; e < 16u * D; e = e + SG) {
      let r = min(row0 + sg * 16u + e / D, total_rows - 1u);
      os[oc + e] = state[state_base(r / G, kvh * G + r % G) + e % D];
    }
#else
    if (D > 0u) { state_to_scratch(0u, sc, sg, lane, row0, total_rows, kvh); o0 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
    if (D > 16u) { state_to_scratch(1u, sc, sg, lane, row0, total_rows, kvh); o1 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
    if (D > 32u) { state_to_scratch(2u, sc, sg, lane, row0, total_rows, kvh); o2 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
    if (D > 48u) { state_to_scratch(3u, sc, sg, lane, row0, total_rows, kvh); o3 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
    if (D > 64u) { state_to_scratch(4u, sc, sg, lane, row0, total_rows, kvh); o4 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
    if (D > 80u) { state_to_scratch(5u, sc, sg, lane, row0, total_rows, kvh); o5 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
    if (D > 96u) { state_to_scratch(6u, sc, sg, lane, row0, total_rows, kvh); o6 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
    if (D > 112u) { state_to_scratch(7u, sc, sg, lane, row0, total_rows, kvh); o7 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
#endif
  }
#endif

  for (var kt = kbeg; kt < kend; kt = kt + BK) {
    workgroupBarrier();
    if (lid == 0u) { rescale = 0u; }
    for (var i = lid; i < BK * half_d; i = i + threads) {
      let key = i / half_d;
      let w = i % half_d;
      var kw = 0u;
      var vw = 0u;
      if (kt + key < kend) {
        let idx = kv_word(kt + key, kvh) + w;
        kw = kpool[idx];
        vw = vpool[idx];
      }
      let kh = bitcast<vec2<f16>>(kw);
      let vh = bitcast<vec2<f16>>(vw);
      ks[key * LD + 2u * w] = kh.x;
      ks[key * LD + 2u * w + 1u] = kh.y;
      vt[(2u * w) * BK + key] = vh.x;
      vt[(2u * w + 1u) * BK + key] = vh.y;
    }
    workgroupBarrier();

    // S = Q K^T: left Q rows (row-major in qs), right K^T (K's rows as columns: col-major in ks).
    var s0 = subgroup_matrix_result<f32, 16, 16>();
    var s1 = subgroup_matrix_result<f32, 16, 16>();
    for (var kd = 0u; kd < D; kd = kd + 16u) {
      let a = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&qs, sg * 16u * LD + kd, LD);
      let b0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&ks, kd, LD);
      let b1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&ks, 16u * LD + kd, LD);
      s0 = subgroupMatrixMultiplyAccumulate(a, b0, s0);
      s1 = subgroupMatrixMultiplyAccumulate(a, b1, s1);
    }
    subgroupMatrixStore<row_major>(&ss, sc, s0, BK);
    subgroupMatrixStore<row_major>(&ss, sc + 16u, s1, BK);
    workgroupBarrier();

    if (owner) {
      let srow = sc + lane * BK;
      var tmax = NEG;
      for (var k = 0u; k < BK; k = k + 1u) {
        let pos = kt + k;
        if (pos <= qpos && pos < kend) { tmax = max(tmax, ss[srow + k]); }
      }
      var alpha = 1.0;
      if (tmax > mrun + TAU) {
        alpha = exp(mrun - tmax);   // 0 from the empty state
        if (l > 0.0) { rescale = 1u; }
        mrun = tmax;
        l = l * alpha;
      }
      row_a[rr] = alpha;
      for (var k = 0u; k < BK; k = k + 1u) {
        let pos = kt + k;
        var ph = f16(0.0);
        if (pos <= qpos && pos < kend) { ph = f16(exp(ss[srow + k] - mrun)); }
        ps[pc + lane * PLD + k] = ph;
        l = l + f32(ph);
      }
    }
    // A barrier: the probabilities are visible below, and the branch is uniform.
    if (workgroupUniformLoad(&rescale) != 0u) {
#if OSHARED
      for (var e = lane; e < 16u * D; e = e + SG) { os[oc + e] = os[oc + e] * row_a[sg * 16u + e / D]; }
      workgroupBarrier();
#else
      if (D > 0u) { subgroupMatrixStore<row_major>(&ss, sc, o0, 16u); scale_scratch(sc, sg, lane); o0 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
      if (D > 16u) { subgroupMatrixStore<row_major>(&ss, sc, o1, 16u); scale_scratch(sc, sg, lane); o1 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
      if (D > 32u) { subgroupMatrixStore<row_major>(&ss, sc, o2, 16u); scale_scratch(sc, sg, lane); o2 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
      if (D > 48u) { subgroupMatrixStore<row_major>(&ss, sc, o3, 16u); scale_scratch(sc, sg, lane); o3 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
      if (D > 64u) { subgroupMatrixStore<row_major>(&ss, sc, o4, 16u); scale_scratch(sc, sg, lane); o4 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
      if (D > 80u) { subgroupMatrixStore<row_major>(&ss, sc, o5, 16u); scale_scratch(sc, sg, lane); o5 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
      if (D > 96u) { subgroupMatrixStore<row_major>(&ss, sc, o6, 16u); scale_scratch(sc, sg, lane); o6 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
      if (D > 112u) { subgroupMatrixStore<row_major>(&ss, sc, o7, 16u); scale_scratch(sc, sg, lane); o7 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
#endif
    }

    // O += P V: left P (row-major in ps), right V (col-major in vt, V transposed: on an H100,
    // driver 580.159, V loaded as a row-major right matrix from workgroup memory gave wrong O).
    let p0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&ps, pc, PLD);
    let p1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&ps, pc + 16u, PLD);
#if OSHARED
    for (var b = 0u; b < D; b = b + 16u) {
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&vt, b * BK, BK);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&vt, b * BK + 16u, BK);
      let acc = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&os, oc + b, D);
      subgroupMatrixStore<row_major>(&os, oc + b, subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, acc)), D);
    }
#else
    if (D > 0u) {
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&vt, 0u * BK, BK);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&vt, 0u * BK + 16u, BK);
      o0 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o0));
    }
    if (D > 16u) {
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&vt, 16u * BK, BK);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&vt, 16u * BK + 16u, BK);
      o1 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o1));
    }
    if (D > 32u) {
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&vt, 32u * BK, BK);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&vt, 32u * BK + 16u, BK);
      o2 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o2));
    }
    if (D > 48u) {
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&vt, 48u * BK, BK);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&vt, 48u * BK + 16u, BK);
      o3 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o3));
    }
    if (D > 64u) {
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&vt, 64u * BK, BK);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&vt, 64u * BK + 16u, BK);
      o4 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o4));
    }
    if (D > 80u) {
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&vt, 80u * BK, BK);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&vt, 80u * BK + 16u, BK);
      o5 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o5));
    }
    if (D > 96u) {
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&vt, 96u * BK, BK);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&vt, 96u * BK + 16u, BK);
      o6 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o6));
    }
    if (D > 112u) {
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&vt, 112u * BK, BK);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&vt, 112u * BK + 16u, BK);
      o7 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o7));
    }
#endif
  }

  workgroupBarrier();
  if (owner) { row_a[rr] = 1.0 / l; }
#if WINDOW
  if ((p.flags & LAST) == 0u) {
    if (owner && row0 + rr < total_rows) {
      let sb = state_base(qi, h);
      state[sb + D] = mrun;
      state[sb + D + 1u] = l;
    }
#if OSHARED
    for (var e = lane; e < 16u * D; e = e + SG) {
      let r = row0 + sg * 16u + e / D;
      if (r < total_rows) { state[state_base(r / G, kvh * G + r % G) + e % D] = os[oc + e]; }
    }
#else
    if (D > 0u) { subgroupMatrixStore<row_major>(&ss, sc, o0, 16u); scratch_to_state(0u, sc, sg, lane, row0, total_rows, kvh); }
    if (D > 16u) { subgroupMatrixStore<row_major>(&ss, sc, o1, 16u); scratch_to_state(1u, sc, sg, lane, row0, total_rows, kvh); }
    if (D > 32u) { subgroupMatrixStore<row_major>(&ss, sc, o2, 16u); scratch_to_state(2u, sc, sg, lane, row0, total_rows, kvh); }
    if (D > 48u) { subgroupMatrixStore<row_major>(&ss, sc, o3, 16u); scratch_to_state(3u, sc, sg, lane, row0, total_rows, kvh); }
    if (D > 64u) { subgroupMatrixStore<row_major>(&ss, sc, o4, 16u); scratch_to_state(4u, sc, sg, lane, row0, total_rows, kvh); }
    if (D > 80u) { subgroupMatrixStore<row_major>(&ss, sc, o5, 16u); scratch_to_state(5u, sc, sg, lane, row0, total_rows, kvh); }
    if (D > 96u) { subgroupMatrixStore<row_major>(&ss, sc, o6, 16u); scratch_to_state(6u, sc, sg, lane, row0, total_rows, kvh); }
    if (D > 112u) { subgroupMatrixStore<row_major>(&ss, sc, o7, 16u); scratch_to_state(7u, sc, sg, lane, row0, total_rows, kvh); }
#endif
    return;
  }
#endif
#if OSHARED
  workgroupBarrier();
  for (var e = lane; e < 16u * D; e = e + SG) {
    let r = row0 + sg * 16u + e / D;
    if (r < total_rows) { out[((r / G) * p.H + kvh * G + r % G) * D + e % D] = os[oc + e] * row_a[sg * 16u + e / D]; }
  }
#else
  if (D > 0u) { subgroupMatrixStore<row_major>(&ss, sc, o0, 16u); scratch_to_out(0u, sc, sg, lane, row0, total_rows, kvh); }
  if (D > 16u) { subgroupMatrixStore<row_major>(&ss, sc, o1, 16u); scratch_to_out(1u, sc, sg, lane, row0, total_rows, kvh); }
  if (D > 32u) { subgroupMatrixStore<row_major>(&ss, sc, o2, 16u); scratch_to_out(2u, sc, sg, lane, row0, total_rows, kvh); }
  if (D > 48u) { subgroupMatrixStore<row_major>(&ss, sc, o3, 16u); scratch_to_out(3u, sc, sg, lane, row0, total_rows, kvh); }
  if (D > 64u) { subgroupMatrixStore<row_major>(&ss, sc, o4, 16u); scratch_to_out(4u, sc, sg, lane, row0, total_rows, kvh); }
  if (D > 80u) { subgroupMatrixStore<row_major>(&ss, sc, o5, 16u); scratch_to_out(5u, sc, sg, lane, row0, total_rows, kvh); }
  if (D > 96u) { subgroupMatrixStore<row_major>(&ss, sc, o6, 16u); scratch_to_out(6u, sc, sg, lane, row0, total_rows, kvh); }
  if (D > 112u) { subgroupMatrixStore<row_major>(&ss, sc, o7, 16u); scratch_to_out(7u, sc, sg, lane, row0, total_rows, kvh); }
#endif
}
