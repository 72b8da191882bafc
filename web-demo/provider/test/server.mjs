// Starts and stops the real Concord server binary for the end-to-end tests. The start/stop logic is
// a trimmed copy of tests/interop/harness.mjs (this package stands alone): spawn on port 0, wait for
// the `listening on HOST:PORT` line, SIGTERM and require exit 0 at the end.
//
// The binary is $CONCORD_SERVER_BIN, or ../../target/debug/concord-server relative to the package
// ($CARGO_TARGET_DIR/debug/concord-server when that is set, as in tests/interop); build it with
// `cargo build -p concord-server --bins` at the repository root.

import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const packageDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const repoRoot = path.resolve(packageDir, '..', '..')
const targetDir = process.env.CARGO_TARGET_DIR ? path.resolve(repoRoot, process.env.CARGO_TARGET_DIR) : path.join(repoRoot, 'target')
export const serverBin = process.env.CONCORD_SERVER_BIN
  ? path.resolve(process.env.CONCORD_SERVER_BIN)
  : path.join(targetDir, 'debug', 'concord-server')

/** How long the server gets to print its `listening on` line. */
const STARTUP_TIMEOUT_MS = 30_000
/** How long the server gets to exit after SIGTERM. */
const SHUTDOWN_TIMEOUT_MS = 15_000

export class Server {
  constructor (child) {
    this.child = child
    this.stderrChunks = []
    this.exit = null
    this.exited = new Promise((resolve) => child.on('exit', (code, signal) => {
      this.exit = { code, signal }
      resolve(this.exit)
    }))
    /** `127.0.0.1:PORT`, set once it listens. */
    this.address = null
  }

  /** The base URL for HttpProvider. */
  get httpUrl () {
    return `http://${this.address}`
  }

  /** The base URL for y-websocket. */
  get wsUrl () {
    return `ws://${this.address}`
  }

  stderrTail (max = 8000) {
    const s = Buffer.concat(this.stderrChunks).toString('utf8')
    return s.length > max ? '...' + s.slice(-max) : s
  }

  /** SIGTERM, then require a clean exit with status 0 within the deadline. */
  async stop () {
    if (this.exit) throw new Error(`server had already exited before the end of the test: ${JSON.stringify(this.exit)}`)
    this.child.kill('SIGTERM')
    let timer
    const timedOut = new Promise((resolve) => { timer = setTimeout(() => resolve(null), SHUTDOWN_TIMEOUT_MS) })
    const result = await Promise.race([this.exited, timedOut])
    clearTimeout(timer)
    if (result === null) {
      this.child.kill('SIGKILL')
      await this.exited
      throw new Error(`server did not exit within ${SHUTDOWN_TIMEOUT_MS} ms of SIGTERM`)
    }
    if (result.code !== 0) throw new Error(`server exited with ${JSON.stringify(result)} after SIGTERM, expected code 0`)
  }
}

/** Starts `concord-server --host 127.0.0.1 --port 0 --in-memory ...extraArgs` and waits until it listens. */
export async function startServer (extraArgs = []) {
  if (!existsSync(serverBin)) {
    throw new Error(`server binary not found at ${serverBin}: run \`cargo build -p concord-server --bins\` ` +
      'at the repository root, or set CONCORD_SERVER_BIN')
  }
  const child = spawn(serverBin, ['--host', '127.0.0.1', '--port', '0', '--in-memory', ...extraArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_BACKTRACE: '1' }
  })
  const server = new Server(child)
  child.stderr.on('data', (chunk) => server.stderrChunks.push(chunk))
  server.address = await new Promise((resolve, reject) => {
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
      buffered += chunk.toString('utf8')
      for (const line of buffered.split('\n').slice(0, -1)) {
        const m = /^listening on (\S+:\d+)\s*$/.exec(line)
        if (m) {
          clearTimeout(timer)
          child.off('exit', onExit)
          child.off('error', onError)
          resolve(m[1])
          return
        }
      }
    })
  })
  return server
}
