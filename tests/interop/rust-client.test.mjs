// Interop test: the Rust concord-client provider (driven through target/debug/client-peer) and y-websocket JS clients on the same document: edits converge, awareness goes both ways, typing clears by itself, leaving removes the state, and edits become saved once acknowledged.

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import path from 'node:path'
import { createInterface } from 'node:readline'
import { DEFAULT_TIMEOUT_MS, canonical, serverTest, waitFor, waitSynced, yrsPeerBin } from './harness.mjs'

/** Built next to yrs-peer by `cargo build -p concord-tests --bins`. */
const clientPeerBin = process.env.CLIENT_PEER_BIN || path.join(path.dirname(yrsPeerBin), 'client-peer')

/**
 * A running client-peer: one JSON command per line on its stdin, one JSON answer per line on its
 * stdout, in order. Killed by the Ctx at the end of the test if still running.
 */
class ClientPeer {
  static async start (ctx, name, args = []) {
    if (!existsSync(clientPeerBin)) {
      throw new Error(`client-peer not found at ${clientPeerBin}: run \`cargo build -p concord-tests --bin client-peer\` or set CLIENT_PEER_BIN`)
    }
    const child = ctx.track(spawn(clientPeerBin, [ctx.server.url, ctx.docName(name), ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, RUST_BACKTRACE: '1' }
    }))
    const peer = new ClientPeer(child)
    const ready = await peer.next('the ready line')
    assert.equal(ready.ready, true, `client-peer's first line: ${JSON.stringify(ready)}`)
    peer.client = ready.client
    return peer
  }

  constructor (child) {
    this.child = child
    this.lines = []
    this.waiters = []
    this.stderrChunks = []
    this.exit = null
    this.exited = new Promise((resolve) => child.on('exit', (code, signal) => {
      this.exit = { code, signal }
      for (const w of this.waiters.splice(0)) w.reject(new Error(`client-peer exited (${code}/${signal}) before answering ${w.what}\n${this.stderr()}`))
      resolve(this.exit)
    }))
    child.stderr.on('data', (c) => this.stderrChunks.push(c))
    createInterface({ input: child.stdout }).on('line', (line) => {
      const waiter = this.waiters.shift()
      if (waiter) waiter.resolve(line)
      else this.lines.push(line)
    })
  }

  stderr () {
    return '--- client-peer stderr ---\n' + Buffer.concat(this.stderrChunks).toString('utf8')
  }

  /** The next line, parsed; rejects after the deadline or when the peer exits first. */
  async next (what) {
    const line = this.lines.length > 0
      ? this.lines.shift()
      : await new Promise((resolve, reject) => {
        if (this.exit) return reject(new Error(`client-peer had exited (${JSON.stringify(this.exit)}) before ${what}\n${this.stderr()}`))
        const waiter = { what, resolve, reject }
        const timer = setTimeout(() => {
          this.waiters.splice(this.waiters.indexOf(waiter), 1)
          reject(new Error(`client-peer did not answer ${what} within ${DEFAULT_TIMEOUT_MS} ms\n${this.stderr()}`))
        }, DEFAULT_TIMEOUT_MS)
        waiter.resolve = (l) => { clearTimeout(timer); resolve(l) }
        waiter.reject = (e) => { clearTimeout(timer); reject(e) }
        this.waiters.push(waiter)
      })
    return JSON.parse(line)
  }

  /** Sends a command and returns its answer (an `error` answer throws). */
  async send (command) {
    this.child.stdin.write(JSON.stringify(command) + '\n')
    const answer = await this.next(JSON.stringify(command))
    if (answer.error) throw new Error(`client-peer refused ${JSON.stringify(command)}: ${answer.error}`)
    return answer
  }

  state () {
    return this.send({ cmd: 'state' })
  }

  /** Polls the peer's state until `predicate(state)` holds; returns that state. */
  async waitState (predicate, message) {
    let last = null
    await waitFor(async () => {
      last = await this.state()
      return predicate(last)
    }, { message: () => `${message}; the Rust client's state: ${JSON.stringify(last)}` })
    return last
  }
}

const describe = (awareness) => JSON.stringify([...awareness.getStates().entries()])

serverTest('a Rust client and a JS client edit text and map and converge', async (ctx) => {
  const js = ctx.client('rust-client')
  await waitSynced(js.provider)
  const jsText = js.doc.getText('text')
  const jsMap = js.doc.getMap('map')
  jsText.insert(0, 'js:hello ')
  jsMap.set('from', 'js')

  const rust = await ClientPeer.start(ctx, 'rust-client', ['--client-id', '4242'])
  assert.equal(rust.client, 4242)
  // The sync brings the JS edits made before the Rust client connected.
  await rust.waitState((s) => s.status === 'synced' && s.text === 'js:hello ' && s.map.from === 'js',
    'the Rust client to sync the JS edits')

  // Edits on both sides, without waiting for each other.
  await rust.send({ cmd: 'insert', text: 'rust:hi ', at: 0 })
  await rust.send({ cmd: 'map', key: 'rust', value: { nested: [1, 'two', true, null], half: 0.5 } })
  jsText.insert(jsText.length, 'js:end')
  jsMap.set('from', 'js again')

  const expectedMap = { from: 'js again', rust: { nested: [1, 'two', true, null], half: 0.5 } }
  const final = await rust.waitState(
    (s) => s.text === jsText.toString() && canonical(s.map) === canonical(jsMap.toJSON()) &&
      canonical(s.map) === canonical(expectedMap),
    `both clients to converge; JS has text ${JSON.stringify(jsText.toString())} map ${JSON.stringify(jsMap.toJSON())}`)
  assert.equal(final.text, 'rust:hi js:hello js:end')

  // The server holds the Rust client's edits: a new JS client gets them in its sync.
  const late = ctx.client('rust-client')
  await waitSynced(late.provider)
  assert.equal(late.doc.getText('text').toString(), final.text)
  assert.equal(canonical(late.doc.getMap('map').toJSON()), canonical(expectedMap))
})

serverTest("the Rust client's edits are unsaved until the server acknowledges them", async (ctx) => {
  const rust = await ClientPeer.start(ctx, 'rust-saved')
  const synced = await rust.waitState((s) => s.status === 'synced', 'the Rust client to sync')
  assert.equal(synced.unsaved, false, 'nothing to save before any edit')

  // Read right after the edit, before any round trip could have brought the acknowledgement.
  const inserted = await rust.send({ cmd: 'insert', text: 'durable' })
  assert.equal(inserted.unsaved, true, 'an edit is unsaved until acknowledged')
  await rust.waitState((s) => s.unsaved === false, 'the edit to be acknowledged')

  const mapped = await rust.send({ cmd: 'map', key: 'k', value: 'v' })
  assert.equal(mapped.unsaved, true)
  await rust.waitState((s) => s.unsaved === false, 'the map edit to be acknowledged')

  const js = ctx.client('rust-saved')
  await waitSynced(js.provider)
  assert.equal(js.doc.getText('text').toString(), 'durable')
  assert.equal(js.doc.getMap('map').get('k'), 'v')
})

serverTest('awareness between a Rust and a JS client: presence, typing that clears itself, leaving', async (ctx) => {
  const js = ctx.client('rust-awareness')
  await waitSynced(js.provider)
  const jsId = js.doc.clientID
  js.awareness.setLocalStateField('user', { name: 'js', color: '#0000ff' })

  const rust = await ClientPeer.start(ctx, 'rust-awareness', ['--typing-timeout-ms', '300'])
  const rustId = rust.client
  // Every state of the Rust client the JS side saw, in order.
  const rustStates = []
  js.awareness.on('change', ({ added, updated, removed }) => {
    if ([...added, ...updated, ...removed].includes(rustId)) rustStates.push(js.awareness.getStates().get(rustId) ?? null)
  })

  // The Rust client's presence, as the JS client reads it.
  await rust.send({ cmd: 'presence', name: 'rust', color: '#ff0000' })
  await waitFor(() => js.awareness.getStates().get(rustId)?.user?.name === 'rust', {
    message: () => `the JS client to see the Rust presence; it has ${describe(js.awareness)}`
  })
  assert.deepEqual(js.awareness.getStates().get(rustId), {
    user: { name: 'rust', color: '#ff0000' }, status: 'online', typing: false
  })

  // The JS client's presence, as the Rust client reads it.
  await rust.waitState((s) => s.peers[jsId]?.user?.name === 'js' && s.peers[jsId]?.user?.color === '#0000ff',
    "the Rust client to see the JS client's user")

  // Typing: true on the JS side, then false by itself after the typing timeout.
  const typingSent = Date.now()
  await rust.send({ cmd: 'typing' })
  await waitFor(() => rustStates.some((s) => s?.typing === true), {
    message: () => `the JS client to see the Rust client typing; it saw ${JSON.stringify(rustStates)}`
  })
  await waitFor(() => {
    const typed = rustStates.findIndex((s) => s?.typing === true)
    return rustStates.slice(typed + 1).some((s) => s?.typing === false) &&
      js.awareness.getStates().get(rustId)?.typing === false
  }, { message: () => `the typing flag to clear by itself; the JS client saw ${JSON.stringify(rustStates)}` })
  const cleared = Date.now() - typingSent
  assert.ok(cleared >= 250, `typing cleared after ${cleared} ms, before the 300 ms timeout`)
  assert.deepEqual(js.awareness.getStates().get(rustId).user, { name: 'rust', color: '#ff0000' }, 'the user stays')
  const own = await rust.state()
  assert.equal(own.presence.typing, false)

  // JS typing and cursor fields reach the Rust client's peers.
  js.awareness.setLocalStateField('typing', true)
  await rust.waitState((s) => s.peers[jsId]?.typing === true, 'the Rust client to see the JS client typing')
  js.awareness.setLocalStateField('typing', false)
  js.awareness.setLocalStateField('cursor', { anchor: 1, head: 4 })
  const seen = await rust.waitState((s) => s.peers[jsId]?.typing === false && s.peers[jsId]?.cursor?.head === 4,
    "the Rust client to see the JS client's cursor and typing cleared")
  assert.deepEqual(seen.peers[jsId], { user: { name: 'js', color: '#0000ff' }, typing: false, cursor: { anchor: 1, head: 4 } })
  assert.deepEqual(Object.keys(seen.peers), [String(jsId)], 'the Rust client lists only the JS client')

  // Closing the Rust client removes its state on the JS side.
  assert.deepEqual(await rust.send({ cmd: 'close' }), { closed: true })
  await waitFor(() => !js.awareness.getStates().has(rustId), {
    message: () => `the JS client to drop the Rust client's state; it has ${describe(js.awareness)}`
  })
  const exit = await rust.exited
  assert.deepEqual(exit, { code: 0, signal: null }, rust.stderr())
})
