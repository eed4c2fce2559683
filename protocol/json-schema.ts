// JSON Schema files of the public messages, generated from the Effect Schemas so that
// clients in other languages can validate. `npm run schemas` rewrites protocol/schema/;
// a test fails when the checked-in files are stale.
import { JSONSchema } from "effect"
import {
  ErrorReply,
  GenerateReply,
  GenerateRequest,
  HealthReply,
  ModelsReply,
  StreamCancelReply,
  StreamCancelRequest,
  StreamEvent,
  TokenizeReply,
  TokenizeRequest,
} from "./messages.ts"
import { AdminStatsReply, PolicyGetReply, PolicyHistoryReply, PolicyHistoryRequest, PolicyListReply, PolicySetReply, PolicySetRequest } from "./admin.ts"
import { KvPolicyDocument } from "./policy.ts"
import { ServeConfig } from "./config.ts"
import {
  SessionAppendRequest,
  SessionDone,
  SessionGenerateReply,
  SessionGenerateRequest,
  SessionListReply,
  SessionOpenRequest,
  SessionRef,
  SessionReply,
} from "./session.ts"

export const publicSchemas = {
  GenerateRequest,
  GenerateReply,
  StreamEvent,
  StreamCancelRequest,
  StreamCancelReply,
  TokenizeRequest,
  TokenizeReply,
  ModelsReply,
  HealthReply,
  ErrorReply,
  KvPolicyDocument,
  PolicySetRequest,
  PolicySetReply,
  PolicyGetReply,
  PolicyHistoryRequest,
  PolicyHistoryReply,
  PolicyListReply,
  AdminStatsReply,
  ServeConfig,
  SessionOpenRequest,
  SessionAppendRequest,
  SessionGenerateRequest,
  SessionGenerateReply,
  SessionReply,
  SessionRef,
  SessionDone,
  SessionListReply,
} as const

/** File name -> JSON text (2-space indent, trailing newline). */
export const renderSchemas = (): Record<string, string> =>
  Object.fromEntries(
    Object.entries(publicSchemas).map(([name, schema]) => [`${name}.json`, JSON.stringify(JSONSchema.make(schema as never), null, 2) + "\n"]),
  )
