#!/usr/bin/env node
// Runs the TypeScript CLI through tsx (no build step).
// Effect (~600 modules with the fast-check its Schema pulls in) is imported before tsx's
// hooks are registered: every module loaded after that makes a round trip to the hooks'
// thread, and node_modules need no transform. The CLI's imports of it then find these
// same module instances. `leoam --help` took 2.4-2.8 s of CPU this way against 3.2-3.8 s
// (lavapipe machine, 2 cores, load ~11); every leoam process starts that much sooner.
await import("effect")
const { register } = await import("tsx/esm/api")

register()
await import("../cli/main.ts")
