// The `leoam` process (bin/leoam.js): runs the command line (program.ts) on its arguments and
// exits with its status, so that nothing left open (a NATS connection, a timer) keeps it alive.
import { runCli } from "./program.ts"

// Output piped into a reader that quits (`leoam stats --watch | head`) ends the command quietly.
process.stdout.on("error", (e: NodeJS.ErrnoException) => {
  if (e.code === "EPIPE") process.exit(0)
  throw e
})

process.exit(await runCli(process.argv))
