// A real redis-server for interop tests: its own free loopback port, config and temp dir
// (appendonly yes, appendfsync always), never one already running.

import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { waitFor } from './harness.mjs'

/** A loopback port nobody listens on right now. */
export function freePort () {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

/** Whether a Redis answers PING on `port`. */
export function ping (port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1')
    let answer = ''
    socket.setTimeout(500, () => { socket.destroy(); resolve(false) })
    socket.on('error', () => resolve(false))
    socket.on('connect', () => socket.write('PING\r\n'))
    socket.on('data', (chunk) => {
      answer += chunk.toString()
      if (answer.includes('\r\n')) {
        socket.destroy()
        resolve(answer.startsWith('+PONG'))
      }
    })
  })
}

/** A redis-server of this test: its own port, config and directory. */
export class Redis {
  static async start (extra = []) {
    const redis = new Redis()
    redis.dir = mkdtempSync(path.join(os.tmpdir(), 'concord-redis-'))
    redis.port = await freePort()
    writeFileSync(path.join(redis.dir, 'redis.conf'), [
      'bind 127.0.0.1', `port ${redis.port}`, `dir ${redis.dir}`, 'appendonly yes',
      'appendfsync always', 'save ""', `logfile ${path.join(redis.dir, 'redis.log')}`, ...extra
    ].join('\n') + '\n')
    await redis.spawn()
    return redis
  }

  get url () { return `redis://127.0.0.1:${this.port}` }

  /** The flags that put a Concord node on this Redis. */
  get args () { return ['--redis-url', this.url] }

  /** The server that holds `key` (here: this one). */
  ownerOf () { return this }

  async spawn () {
    this.child = spawn('redis-server', [path.join(this.dir, 'redis.conf')], { stdio: 'ignore' })
    this.exited = new Promise((resolve) => this.child.on('exit', resolve))
    await waitFor(() => ping(this.port), {
      timeout: 20_000,
      message: () => 'redis-server to answer PING; its log:\n' + this.log()
    })
  }

  /** `redis-cli` on this server; its output. */
  cli (...args) {
    const out = spawnSync('redis-cli', ['-p', String(this.port), ...args], { encoding: 'utf8' })
    return (out.stdout ?? '').trim()
  }

  log () {
    try { return readFileSync(path.join(this.dir, 'redis.log'), 'utf8') } catch { return '' }
  }

  async kill () {
    this.child.kill('SIGKILL')
    await this.exited
  }

  async restart () {
    await this.kill()
    await this.spawn()
  }

  async stop () {
    if (this.child.exitCode === null && this.child.signalCode === null) await this.kill()
    rmSync(this.dir, { recursive: true, force: true })
  }
}
