// One line per decoding failure: the first problem, with its path, as "a.b[2].c: message".
// Effect's tree formatter lists every member of every union (an optional field is a union
// with undefined), which is hard to read in an error reply or on a terminal.
import { ParseResult } from "effect"

export const firstIssue = (error: ParseResult.ParseError): string => {
  const issues = ParseResult.ArrayFormatter.formatErrorSync(error)
  // "Expected undefined" is the optional field's other branch, never the useful one.
  const useful = issues.filter((i) => !/^Expected undefined, actual/.test(i.message))
  const issue = useful[0] ?? issues[0]
  if (!issue) return error.message.split("\n")[0]
  const at = issue.path.map((p) => (typeof p === "number" ? `[${p}]` : `.${String(p)}`)).join("").replace(/^\./, "")
  // Several literals at one path (an enum): say them all at once.
  const literals = useful.filter((i) => i.path.join(".") === issue.path.join(".") && /^Expected "[^"]*", actual /.test(i.message))
  const message =
    literals.length > 1
      ? `expected one of ${literals.map((i) => /^Expected ("[^"]*")/.exec(i.message)![1]).join(", ")}, ${issue.message.replace(/^Expected "[^"]*", /, "")}`
      : issue.message
  return at ? `${at}: ${message}` : message
}
