// Test harness for the Concord interop suite: starts a fresh server per test, creates y-websocket clients, and polls for results.
//
// Run: `cargo build -p concord-server && cargo build -p concord-tests --bin yrs-peer`, then
// `cd tests/interop && npm ci && npm test`.
//
// Environment variables:
//   CONCORD_SERVER_BIN   path to the server binary (default: <repo>/target/debug/concord-server,
//                        or $CARGO_TARGET_DIR/debug/concord-server when that is set).
//   YRS_PEER_BIN         path to the Rust peer (default: <repo>/target/debug/yrs-peer).
//   INTEROP_SERVER_URL   e.g. ws://127.0.0.1:1234 -- use an already-running server instead of
//                        spawning one (only meant for validating the suite against the reference
//                        Node server). Every test then prefixes its document names with a random
//                        run id, since documents outlive the test on a shared server.
//   INTEROP_SEED         integer seed for the randomised tests (printed on failure).
//
// Waiting is always done by polling a predicate against a generous deadline (waitFor), never by
// sleeping a fixed time and hoping the result is there.

import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import { fileURLToPath } from 'node:url'
import path from 'node:path'
import { test } from 'node:test'
import { pollUntil, terminate } from '../wait.mjs'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

// Every WebsocketProvider adds a process 'exit' listener; a test with many clients exceeds the default 10.
process.setMaxListeners(100)

const here = path.dirname(fileURLToPath(import.meta.url))
export const repoRoot = path.resolve(here, '..', '..')
const targetDir = process.env.CARGO_TARGET_DIR
  ? path.resolve(repoRoot, process.env.CARGO_TARGET_DIR)
  : path.join(repoRoot, 'target')

export const serverBin = process.env.CONCORD_SERVER_BIN || path.join(targetDir, 'debug', 'concord-server')
export const yrsPeerBin = process.env.YRS_PEER_BIN || path.join(targetDir, 'debug', 'yrs-peer')
export const externalServerUrl = process.env.INTEROP_SERVER_URL || null

/** Default deadline for anything that waits on the network. Generous: CI has 2 noisy cores. */
export const DEFAULT_TIMEOUT_MS = 15_000
/** How long the server gets to print its `listening on` line. */
const STARTUP_TIMEOUT_MS = 30_000
/** How long the server gets to exit after SIGTERM. */
const SHUTDOWN_TIMEOUT_MS = 15_000
/** Per-test upper bound, so a hung test fails instead of hanging the suite. */
export const TEST_TIMEOUT_MS = 120_000

/** Polls `predicate` until it returns a truthy value or the deadline passes (see ../wait.mjs). */
export const waitFor = (predicate, { timeout = DEFAULT_TIMEOUT_MS, interval = 15, message = 'condition' } = {}) =>
  pollUntil(predicate, { timeout, interval, message })

/** Mulberry32: a tiny seeded PRNG so randomised tests can be replayed with INTEROP_SEED. */
export function makeRng (seed) {
  let a = seed >>> 0
  const next = () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  return {
    seed,
    next,
    /** integer in [0, n) */
    int: (n) => Math.floor(next() * n),
    pick: (arr) => arr[Math.floor(next() * arr.length)]
  }
}

export function seedFromEnv () {
  return process.env.INTEROP_SEED ? Number(process.env.INTEROP_SEED) : Math.floor(Math.random() * 2 ** 31)
}

/** JSON.stringify with object keys sorted, so Y.Map key order (which may differ per replica) does not matter. */
export function canonical (value) {
  return JSON.stringify(value, (_key, v) => {
    if (v && typeof v === 'object' && !Array.isArray(v)) {
      return Object.fromEntries(Object.keys(v).sort().map((k) => [k, v[k]]))
    }
    return v
  })
}

/**
 * The root types the tests use. A Y.Doc that only *received* a root type has it as a generic
 * AbstractType, which toJSON() silently drops, so every client defines these up front.
 */
export const ROOTS = { text: Y.Text, body: Y.Text, map: Y.Map, meta: Y.Map, array: Y.Array }

export function defineRoots (doc) {
  for (const [name, type] of Object.entries(ROOTS)) doc.get(name, type)
  return doc
}

/** Canonical JSON of a whole document (the ROOTS types, plus any other root it has defined). */
export function docJson (doc) {
  defineRoots(doc)
  return canonical(doc.toJSON())
}

export function stateVectorHex (doc) {
  return Buffer.from(Y.encodeStateVector(doc)).toString('hex')
}

/**
 * A running server: spawned fresh, or the external one named by INTEROP_SERVER_URL.
 */
export class Server {
  constructor ({ url, child = null }) {
    this.url = url
    this.child = child
    this.stderrChunks = []
    this.stdoutChunks = []
    this.exit = null
    this.exited = child
      ? new Promise((resolve) => child.on('exit', (code, signal) => {
        this.exit = { code, signal }
        resolve(this.exit)
      }))
      : Promise.resolve(null)
  }

  stderr () {
    return Buffer.concat(this.stderrChunks).toString('utf8')
  }

  /** The tail of stderr, for failure messages. */
  stderrTail (max = 8000) {
    const s = this.stderr()
    return s.length > max ? '...' + s.slice(-max) : s
  }

  /** The port the server listens on (to restart a server on the same address). */
  get port () {
    return this.url ? Number(new URL(this.url).port) : null
  }

  /** SIGKILL (a crash: nothing is flushed, no close frames), then wait until it has exited. */
  async kill () {
    if (!this.child) return
    if (this.exit) {
      throw new Error(`server had already exited before it was killed: ${JSON.stringify(this.exit)}`)
    }
    this.child.kill('SIGKILL')
    await this.exited
  }

  /** SIGTERM, then require a clean exit with status 0 within the deadline. */
  async stop () {
    if (!this.child) return
    if (this.exit) {
      throw new Error(`server had already exited before the end of the test: ${JSON.stringify(this.exit)}`)
    }
    const result = await terminate(this.child, this.exited, SHUTDOWN_TIMEOUT_MS)
    if (result.code !== 0) {
      throw new Error(`server exited with ${JSON.stringify(result)} after SIGTERM, expected code 0`)
    }
  }
}

/**
 * Starts the server binary on an ephemeral port and waits for its `listening on HOST:PORT` line.
 * With INTEROP_SERVER_URL set, returns a handle on that server instead (`extraArgs` are then
 * ignored). `extraArgs` may name the store (`--data-dir DIR`, which the caller then owns and
 * removes, e.g. to restart a server on the same documents, or `--in-memory`) and the port
 * (`--port N`, e.g. the port of the server being restarted, so running clients reconnect).
 */
export async function startServer (extraArgs = []) {
  if (externalServerUrl) return new Server({ url: externalServerUrl.replace(/\/+$/, '') })
  if (!existsSync(serverBin)) {
    throw new Error(`server binary not found at ${serverBin}: run \`cargo build -p concord-server\` ` +
      'or set CONCORD_SERVER_BIN (or INTEROP_SERVER_URL for an already-running server)')
  }
  // Each server stores its documents in a fresh directory unless the test chose one.
  const ownDataDir = extraArgs.includes('--data-dir') || extraArgs.includes('--in-memory')
    ? null
    : mkdtempSync(path.join(os.tmpdir(), 'concord-interop-'))
  const storeArgs = ownDataDir ? ['--data-dir', ownDataDir] : []
  // `--port N` in extraArgs (to restart a server on the address its clients know) replaces 0.
  const portArgs = extraArgs.includes('--port') ? [] : ['--port', '0']
  const child = spawn(serverBin, ['--host', '127.0.0.1', ...portArgs, ...storeArgs, ...extraArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_BACKTRACE: '1' }
  })
  const server = new Server({ url: null, child })
  if (ownDataDir) server.exited.then(() => rmSync(ownDataDir, { recursive: true, force: true }))
  child.stderr.on('data', (chunk) => server.stderrChunks.push(chunk))

  const url = await new Promise((resolve, reject) => {
    let buffered = ''
    const timer = setTimeout(() => fail(`no "listening on" line within ${STARTUP_TIMEOUT_MS} ms`), STARTUP_TIMEOUT_MS)
    const fail = (why) => {
      clearTimeout(timer)
      child.kill('SIGKILL')
      reject(new Error(`${why}\nstdout: ${JSON.stringify(buffered)}\n--- server stderr ---\n${server.stderrTail()}`))
    }
    const onError = (err) => fail(`cannot spawn ${serverBin}: ${err.message}`)
    const onExit = (code, signal) => fail(`server exited during startup (code ${code}, signal ${signal})`)
    child.on('error', onError)
    child.on('exit', onExit)
    child.stdout.on('data', (chunk) => {
      server.stdoutChunks.push(chunk)
      buffered += chunk.toString('utf8')
      const lines = buffered.split('\n')
      for (const line of lines.slice(0, -1)) {
        const m = /^listening on (\S+:\d+)\s*$/.exec(line)
        if (m) {
          clearTimeout(timer)
          child.off('exit', onExit)
          child.off('error', onError)
          resolve(`ws://${m[1]}`)
          return
        }
      }
    })
  })
  server.url = url
  return server
}

/**
 * Everything one test needs: a server, and clients that are all torn down at the end.
 */
export class Ctx {
  constructor (server) {
    this.server = server
    this.providers = []
    this.children = []
    // On a shared external server documents persist across tests: keep names unique per test.
    this.prefix = externalServerUrl ? `run-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}/` : ''
  }

  /** The document name to use on the server for the test-local name `name`. */
  docName (name) {
    return this.prefix + name
  }

  /**
   * A new Y.Doc connected through its own WebsocketProvider to document `name`.
   * BroadcastChannel is disabled: providers in one process must only talk through the server.
   */
  client (name, { doc = new Y.Doc(), connect = true, params = {} } = {}) {
    defineRoots(doc)
    const provider = new WebsocketProvider(this.server.url, this.docName(name), doc, {
      WebSocketPolyfill: WebSocket,
      disableBc: true,
      resyncInterval: -1,
      connect,
      params
    })
    this.providers.push(provider)
    return { doc, provider, awareness: provider.awareness }
  }

  /** `n` clients on document `name`, all synced with the server. */
  async clients (name, n, opts) {
    const list = Array.from({ length: n }, () => this.client(name, opts))
    await Promise.all(list.map((c) => waitSynced(c.provider)))
    return list
  }

  track (child) {
    this.children.push(child)
    return child
  }

  async cleanup () {
    for (const p of this.providers) {
      try { p.destroy() } catch { /* already destroyed */ }
      // Destroying the doc also destroys its Awareness, whose check interval keeps node alive.
      try { p.doc.destroy() } catch { /* already destroyed */ }
    }
    for (const c of this.children) {
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
    }
    await this.server.stop()
  }
}

/** Waits until the provider has received the server's SyncStep2 on its current connection. */
export function waitSynced (provider, opts = {}) {
  return waitFor(() => provider.synced, { message: `provider for ${provider.url} to be synced`, ...opts })
}

/** Waits until all docs have identical content and identical state vectors. */
export async function waitConverged (docs, opts = {}) {
  await waitFor(() => {
    const json = docJson(docs[0])
    const sv = stateVectorHex(docs[0])
    return docs.every((d) => docJson(d) === json && stateVectorHex(d) === sv)
  }, {
    message: () => 'all documents to converge; currently:\n' + docs.map((d, i) =>
      `  doc ${i} (client ${d.clientID}) sv=${stateVectorHex(d)} json=${truncate(docJson(d), 400)}`).join('\n'),
    ...opts
  })
}

export function truncate (s, n) {
  return s.length > n ? s.slice(0, n) + `...(${s.length} chars)` : s
}

/**
 * Declares a node:test test that gets a fresh server and a Ctx. The server's stderr is appended to
 * the error of a failing test, and the server must exit 0 on SIGTERM at the end of every test.
 */
export function serverTest (name, fn, { serverArgs = [], timeout = TEST_TIMEOUT_MS, skip = false } = {}) {
  test(name, { timeout, skip }, async (t) => {
    const server = await startServer(serverArgs)
    const ctx = new Ctx(server)
    let failure = null
    try {
      await fn(ctx, t)
    } catch (err) {
      failure = err
    }
    try {
      await ctx.cleanup()
    } catch (err) {
      failure = failure ?? err
    }
    if (failure) {
      if (server.child) {
        const extra = `\n--- server stderr (tail) ---\n${server.stderrTail()}`
        if (failure instanceof Error) failure.message += extra
      }
      throw failure
    }
  })
}

/**
 * Mints a token with `concord-server token`. `docs` maps a name or pattern to 'read' | 'write'.
 */
export function mintWith (secretFile, docs, { sub = null, ttl = '1h' } = {}) {
  const args = ['token', '--secret-file', secretFile, '--ttl', ttl]
  for (const [pattern, permission] of Object.entries(docs)) args.push('--doc', `${pattern}=${permission}`)
  if (sub !== null) args.push('--sub', sub)
  const out = execFileSync(serverBin, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 })
  const lines = out.split('\n').filter((l) => l.length > 0)
  assert.equal(lines.length, 1, `\`concord-server ${args.join(' ')}\` prints one line; it printed ${JSON.stringify(out)}`)
  assert.match(lines[0], /^[\w-]+\.[\w-]+\.[\w-]+$/, 'the token is a compact JWT')
  return lines[0]
}
