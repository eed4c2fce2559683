#!/usr/bin/env bash
# Prepares what a run on the GPU machine (the `device` tool) carries: .gpu/ (Node binary,
# Vulkan loader, prelude; from ../shared/tools/gpu-bundle.sh) and .bench-bundle/ (the
# benchmark programs bundled into single files, webgpu's loader and dawn.node, xz'd).
# The kernels travel as the tracked kernels/ folder. Then run on the device:
#   . .gpu/prelude.sh && bash scripts/gpu-run.sh   (with carry: [".gpu", ".bench-bundle"])
set -euo pipefail
cd "$(dirname "$0")/.."
# Node stripped and compressed harder than the shared script does (xz -9e: 21.9 MB instead of 24.2): the
# repository (the bundled model) plus .gpu plus the bundle must stay under 64 MiB.
mkdir -p .gpu
# Debian's node and dawn.node carry their symbol tables; stripped copies travel (about 1.4 MB
# less in the device tool's 64 MiB).
stripped() { local tmp; tmp="$(mktemp)"; cp "$1" "$tmp"; strip --strip-unneeded "$tmp"; xz -T1 -9e -c "$tmp"; rm -f "$tmp"; }
[ -f .gpu/node.xz ] || stripped "$(readlink -f "$(command -v node)")" > .gpu/node.xz
sh ../shared/tools/gpu-bundle.sh >/dev/null
rm -rf .bench-bundle && mkdir -p .bench-bundle/node_modules/webgpu
# The programs to bundle: all by default, or those named (the device tool carries 64 MiB in
# all, the repository included, so a run that needs few should bundle few):
#   bash scripts/gpu-bundle.sh golden-check tiered-bench kv-quality
#   bash scripts/gpu-bundle.sh golden-check gemm-bench        (for `gpu-run.sh gemm`)
progs="${*:-engine-bench golden-check actor-overhead upload-bench tiered-bench kv-quality decode-lab decode-compare gemm-bench}"
for prog in $progs; do
  npx esbuild "bench/$prog.ts" --bundle --platform=node --format=esm --target=node20 \
    --external:webgpu --external:lmdb --outfile=".bench-bundle/$prog.mjs" --log-level=warning \
    --banner:js="import { createRequire as __cr } from 'module'; const require = __cr(import.meta.url);"
  xz -T2 -6 ".bench-bundle/$prog.mjs"   # the device tool carries 64 MiB in all
done
# kv-quality reads its held-out text next to itself (bench/data/ becomes .bench-bundle/data/).
case " $progs " in *" kv-quality "*) cp -r bench/data .bench-bundle/data ;; esac
cp node_modules/webgpu/index.js node_modules/webgpu/package.json .bench-bundle/node_modules/webgpu/
stripped node_modules/webgpu/dist/linux-x64/dawn.node > .bench-bundle/dawn.node.xz
# lmdb is a native module (not bundled): its package and linux-x64 binary travel as a tarball.
# Only what Node 20 on glibc loads (ABI 115; the N-API fallback is left out): no C sources, source maps,
# tests or musl and other-ABI binaries, so the bundle leaves room in the device tool's 64 MiB.
XZ_OPT=-9e tar -cJf .bench-bundle/lmdb.tar.xz \
  --exclude='node_modules/lmdb/dependencies' --exclude='*.map' --exclude='node_modules/msgpackr/dist/test*' \
  --exclude='*.musl.node' --exclude='*.abi127.*' --exclude='*.napi.*' --exclude='*.c' --exclude='*.h' --exclude='*.cpp' --exclude='*.md' \
  node_modules/lmdb node_modules/@lmdb/lmdb-linux-x64 node_modules/msgpackr \
  node_modules/ordered-binary node_modules/weak-lru-cache node_modules/node-gyp-build-optional-packages node_modules/@harperfast \
  node_modules/detect-libc
# The actor and session benchmarks start an embedded nats-server (Debian's static binary); only they need one.
case " $progs " in *" actor-overhead "*|*" session-ttft "*) xz -T1 -9e -c "$(command -v nats-server)" > .bench-bundle/nats-server.xz ;; esac
# BASE=<commit>: the same programs (those named, else tiered-bench and engine-bench) built from
# that commit too, into .bench-bundle/base/ with its kernels in .bench-bundle/kernels/ (a bundle
# finds kernels at ../kernels/ from itself), for side-by-side runs (`gpu-run.sh compare`).
if [ -n "${BASE:-}" ]; then
  wt="$(mktemp -d)/base"
  git worktree add --detach "$wt" "$BASE" >/dev/null
  ln -s "$PWD/node_modules" "$wt/node_modules"
  mkdir -p .bench-bundle/base
  # decode-compare is newer than the KV seam: the base gets this tree's copy, with quest asked
  # for the way engines before the seam took it (EngineOptions.sparse).
  if [ ! -f "$wt/bench/decode-compare.ts" ]; then
    sed 's/{ kv: { kind: "quest", policy } }/{ sparse: policy } as never/' bench/decode-compare.ts > "$wt/bench/decode-compare.ts"
  fi
  for prog in $(echo ${*:-tiered-bench engine-bench} decode-compare | tr " " "\n" | sort -u); do
    [ -f "$wt/bench/$prog.ts" ] || continue
    (cd "$wt" && npx esbuild "bench/$prog.ts" --bundle --platform=node --format=esm --target=node20 \
      --external:webgpu --external:lmdb --outfile="$OLDPWD/.bench-bundle/base/$prog.mjs" --log-level=warning \
      --banner:js="import { createRequire as __cr } from 'module'; const require = __cr(import.meta.url);")
    xz -T2 -6 ".bench-bundle/base/$prog.mjs"
  done
  cp -r "$wt/kernels" .bench-bundle/kernels
  git -C "$wt" rev-parse HEAD > .bench-bundle/base/COMMIT
  git worktree remove --force "$wt"
fi
du -sh .gpu .bench-bundle
