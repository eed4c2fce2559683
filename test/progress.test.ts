// cli/progress.ts: the prefill bar's rate and time left (pure parts).
import { describe, expect, it } from "vitest"
import { formatDuration, rateAndLeft, ratePayload } from "../cli/progress.ts"

describe("prefill progress on a terminal", () => {
  it("shows tokens/s so far and the time left at that rate", () => {
    expect(rateAndLeft(0, 3000, 500)).toEqual({ rate: undefined, leftS: undefined })
    expect(rateAndLeft(1000, 3000, 2000)).toEqual({ rate: 500, leftS: 4 })
    expect(rateAndLeft(3000, 3000, 6000)).toEqual({ rate: 500, leftS: 0 })
    expect(ratePayload(1000, 3000, 2000)).toEqual({ rate: "500", left: "4s" })
    expect(ratePayload(10, 100_000, 1000)).toEqual({ rate: "10.0", left: "2h 46m" })
    expect(ratePayload(0, 3000, 0)).toEqual({ rate: "?", left: "?" })
  })

  it("formats durations", () => {
    expect(formatDuration(undefined)).toBe("?")
    expect(formatDuration(Number.POSITIVE_INFINITY)).toBe("?")
    expect(formatDuration(42.4)).toBe("42s")
    expect(formatDuration(185)).toBe("3m 05s")
    expect(formatDuration(3720)).toBe("1h 02m")
  })
})
