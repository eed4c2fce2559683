// The tokenizing worker thread's entry (actors/tokenize-pool.ts starts it): it registers tsx
// in this thread, as bin/leoam.js does for the main one, then runs the TypeScript body.
import { register } from "tsx/esm/api"

register()
await import("./tokenize-worker.ts")
