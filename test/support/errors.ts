// Shared by the model-loading tests: run a function that must throw a ModelError.
import { expect } from "vitest"
import { ModelError } from "../../models/errors.ts"

/** Runs `f`, which must throw a ModelError, and returns it. */
export const modelErrorOf = (f: () => unknown): ModelError => {
  try {
    f()
  } catch (e) {
    expect(e).toBeInstanceOf(ModelError)
    return e as ModelError
  }
  throw new Error("expected a ModelError")
}
