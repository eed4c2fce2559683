# Sourced by a combined GPU command (bench/results/*/run.sh), which sets $OUT (what the device
# tool returns) and starts with `part_begin`:
#   part_begin
# empties the command's scratch folder $res (/tmp/leoam-res), writes the card, its driver and the
# bundle's commit to $res/device.txt (and the console), and unpacks the bundle; then
#   part NAME SECONDS MODE [ENV=VALUE...] [-- ARGS...]
# runs one scripts/gpu-run.sh mode into $res/NAME with GOLDEN_CHECK=0 (the command checks once,
# up front), cut at SECONDS, and returns it as $OUT/NAME.tar.gz as soon as it ends (the device
# tool returns at most 8 files, and a command cut short still returns the parts before).
part() {
  local name=$1 limit=$2 mode=$3
  shift 3
  local envs=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  mkdir -p "$res/$name"
  echo "== $name: ${envs[*]} gpu-run.sh $mode $* (limit $limit s, at $SECONDS s)" | tee -a "$res/log.txt"
  env GOLDEN_CHECK=0 OUT="$res/$name" "${envs[@]}" timeout "$limit" bash scripts/gpu-run.sh "$mode" "$@" >> "$res/$name/console.txt" 2>&1 \
    || echo "$name: exit $? (stopped at its limit or failed)" | tee -a "$res/log.txt"
  tail -n 25 "$res/$name/console.txt"
  tar -czf "$OUT/$name.tar.gz" -C "$res" "$name"
  cp "$res/log.txt" "$OUT/"
}

part_begin() {
  res=/tmp/leoam-res
  rm -rf "$res" && mkdir -p "$res"
  nvidia-smi --query-gpu=name,driver_version --format=csv | tee "$res/device.txt"
  cat .bench-bundle/COMMIT 2>/dev/null | tee -a "$res/device.txt" || true
  bash scripts/gpu-unpack.sh
}
