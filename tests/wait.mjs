// Waiting for a result in the Node test suites (tests/interop, tests/browser): poll against a
// deadline, never sleep a fixed time and hope. No dependencies, so any suite can import it.

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Polls `predicate` every `interval` ms until it returns a truthy value (which is returned) or
 * `timeout` ms have passed (which throws). `message` may be a string or a function (sync or
 * async) producing one, called at the deadline, so the failure can say what was observed.
 */
export async function pollUntil (predicate, { timeout, interval, message = 'condition' }) {
  const deadline = Date.now() + timeout
  let lastError = null
  for (;;) {
    try {
      const value = await predicate()
      if (value) return value
      lastError = null
    } catch (err) {
      lastError = err
    }
    if (Date.now() >= deadline) {
      let text
      try {
        text = typeof message === 'function' ? await message() : message
      } catch (err) {
        text = `(describing the state failed: ${err.message})`
      }
      throw new Error(`timed out after ${timeout} ms waiting for: ${text}` +
        (lastError ? `\nlast predicate error: ${lastError.stack || lastError}` : ''))
    }
    await sleep(interval)
  }
}

/**
 * Sends SIGTERM to `child` and waits for `exited` (a promise of its `{ code, signal }`) at most
 * `timeout` ms; past that it is killed with SIGKILL and this throws. Returns the exit.
 */
export async function terminate (child, exited, timeout) {
  child.kill('SIGTERM')
  let timer
  const timedOut = new Promise((resolve) => { timer = setTimeout(() => resolve(null), timeout) })
  const result = await Promise.race([exited, timedOut])
  clearTimeout(timer)
  if (result === null) {
    child.kill('SIGKILL')
    await exited
    throw new Error(`server did not exit within ${timeout} ms of SIGTERM`)
  }
  return result
}
