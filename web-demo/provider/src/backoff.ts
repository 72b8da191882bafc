// Reconnection delays: exponential backoff with jitter, capped, as y-websocket does it (100 ms
// doubling up to 2.5 s), plus jitter so that the clients of a restarted server do not all come back
// in the same millisecond.

/** The shape of a backoff schedule. */
export interface BackoffOptions {
  /** Delay before the first retry, in ms (before jitter). Default 100. */
  initialDelay?: number
  /** Largest delay, in ms (before jitter). Default 2500, y-websocket's `maxBackoffTime`. */
  maxDelay?: number
  /**
   * Fraction of the delay that is random: the delay is drawn from `[base * (1 - jitter), base]`.
   * 0 disables jitter. Default 0.5.
   */
  jitter?: number
}

/**
 * The delay before retry number `attempt` (0 for the first retry after a failure): `initialDelay *
 * 2^attempt`, capped at `maxDelay`, then reduced by up to `jitter` of itself using `random` (a number in
 * [0, 1), `Math.random` by default). Pure when `random` is, which is how the schedule is tested.
 */
export function backoffDelay (attempt: number, options: BackoffOptions = {}, random: () => number = Math.random): number {
  const { initialDelay = 100, maxDelay = 2500, jitter = 0.5 } = options
  // Capping the exponent first keeps 2^attempt finite however long a server stays away.
  const base = Math.min(initialDelay * 2 ** Math.min(attempt, 30), maxDelay)
  const r = Math.min(Math.max(random(), 0), 1)
  return Math.round(base * (1 - jitter * r))
}

/** Counts consecutive failures and hands out the matching delays. */
export class Backoff {
  /** Consecutive failures since the last `reset()`. */
  attempts = 0

  constructor (private readonly options: BackoffOptions = {}, private readonly random: () => number = Math.random) {}

  /** The delay to wait after one more failure. */
  next (): number {
    return backoffDelay(this.attempts++, this.options, this.random)
  }

  /** Called after a success (a connection that lasted, a request that was answered). */
  reset (): void {
    this.attempts = 0
  }
}
