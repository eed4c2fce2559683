set -u
out="$OUT"
mkdir -p .bench-bundle/node_modules/webgpu/dist/linux-x64
[ -f .bench-bundle/node_modules/webgpu/dist/linux-x64/dawn.node ] || xz -dc .bench-bundle/dawn.node.xz > .bench-bundle/node_modules/webgpu/dist/linux-x64/dawn.node
for f in .bench-bundle/*.mjs.xz; do [ -f "${f%.xz}" ] || xz -dkc "$f" > "${f%.xz}"; done
[ -d .bench-bundle/node_modules/lmdb ] || tar -xJf .bench-bundle/lmdb.tar.xz -C .bench-bundle
nvidia-smi --query-gpu=name,driver_version --format=csv
echo "tree: $(cat .bench-bundle/NEW_COMMIT)"
timeout 60 node .bench-bundle/golden-check.mjs models/tiny-leo-14m 2>&1 | tee "$out/golden-check.txt" | grep -v "^ok   \"" 
mkdir -p /tmp/leoam-kv
for c in 16 8 4; do
  [ "$SECONDS" -lt "${SKIP_AFTER:-190}" ] || { echo "compression $c skipped (time)"; continue; }
  rm -rf /tmp/leoam-kv/*
  pol=leoam; [ "$c" = 16 ] && pol=full,leoam
  echo "== compression $c"
  timeout 165 node .bench-bundle/tiered-bench.mjs --preset llama-3.1-8b --context 65536 --policies $pol --steps 6 --max-seconds 15 \
    --compression $c --kv-dir /tmp/leoam-kv --out "$out/tiered-8b-64k-c$c.json" 2>&1 | tee "$out/tiered-8b-64k-c$c.txt" || echo "compression $c: failed or stopped"
  echo "elapsed $SECONDS s"
done
