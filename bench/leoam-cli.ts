// The `leoam` command line as one of the bundled programs, for the GPU machine (no tsx there):
// `bash scripts/gpu-bundle.sh leoam-cli`, then `node .bench-bundle/leoam-cli.mjs generate ...`
// (what `gpu-run.sh prefill` runs).
import "../cli/main.ts"
