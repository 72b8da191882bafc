// Helpers shared by the provider tests: waiting with deadlines (never sleeping for a result),
// canonical document JSON, and a fetch wrapper that can cut streams and go offline on demand.

import * as Y from 'yjs'

/** Default deadline for anything that waits on the network. Generous: CI has 2 noisy cores. */
export const DEFAULT_TIMEOUT_MS = 15_000

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Polls `predicate` every `interval` ms until it returns a truthy value (which is returned) or the
 * deadline passes (which throws, with `message`, a string or a function describing what was seen).
 */
export async function waitFor (predicate, { timeout = DEFAULT_TIMEOUT_MS, interval = 10, message = 'condition' } = {}) {
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
      const text = typeof message === 'function' ? message() : message
      throw new Error(`timed out after ${timeout} ms waiting for: ${text}` +
        (lastError ? `\nlast predicate error: ${lastError.stack || lastError}` : ''))
    }
    await sleep(interval)
  }
}

/** The root types the tests use; a doc that only received a root has it untyped, and toJSON drops it. */
export const ROOTS = { text: Y.Text, map: Y.Map, array: Y.Array }

export function defineRoots (doc) {
  for (const [name, type] of Object.entries(ROOTS)) doc.get(name, type)
  return doc
}

/** JSON with object keys sorted, so Y.Map key order does not matter. */
export function canonical (value) {
  return JSON.stringify(value, (_key, v) => {
    if (v && typeof v === 'object' && !Array.isArray(v)) {
      return Object.fromEntries(Object.keys(v).sort().map((k) => [k, v[k]]))
    }
    return v
  })
}

export function docJson (doc) {
  defineRoots(doc)
  return canonical(doc.toJSON())
}

export function stateVectorHex (doc) {
  return Buffer.from(Y.encodeStateVector(doc)).toString('hex')
}

/** Waits until all docs have the same content and the same state vector. */
export async function waitConverged (docs, opts = {}) {
  await waitFor(() => {
    const json = docJson(docs[0])
    const sv = stateVectorHex(docs[0])
    return docs.every((d) => docJson(d) === json && stateVectorHex(d) === sv)
  }, {
    message: () => 'all documents to converge; currently:\n' + docs.map((d, i) =>
      `  doc ${i} (client ${d.clientID}) sv=${stateVectorHex(d)} json=${docJson(d).slice(0, 400)}`).join('\n'),
    ...opts
  })
}

/**
 * Wraps a fetch so a test can misbehave the network under the provider:
 * - `cut()` aborts every request in flight (an SSE stream's reader then fails, as when a proxy
 *   drops the connection) without the provider having asked for it;
 * - `offline = true` makes every new request fail as fetch does without a network, and cuts the
 *   requests in flight;
 * - `requests` records `{ method, url, headers }` of each call.
 */
export class FlakyFetch {
  constructor (inner = globalThis.fetch) {
    this.inner = inner
    this.controllers = new Set()
    this.requests = []
    this._offline = false
    this.fetch = this.fetch.bind(this)
  }

  get offline () {
    return this._offline
  }

  set offline (value) {
    this._offline = value
    if (value) this.cut()
  }

  cut () {
    for (const c of this.controllers) c.abort(new TypeError('network connection cut by the test'))
    this.controllers.clear()
  }

  async fetch (input, init = {}) {
    this.requests.push({ method: init.method ?? 'GET', url: String(input), headers: new Headers(init.headers) })
    if (this._offline) throw new TypeError('fetch failed (offline, by the test)')
    const controller = new AbortController()
    const outer = init.signal
    if (outer) {
      if (outer.aborted) controller.abort(outer.reason)
      else outer.addEventListener('abort', () => controller.abort(outer.reason), { once: true })
    }
    this.controllers.add(controller)
    try {
      return await this.inner(input, { ...init, signal: controller.signal })
    } catch (err) {
      this.controllers.delete(controller)
      throw err
    }
  }
}
