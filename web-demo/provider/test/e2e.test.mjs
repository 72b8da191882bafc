// End-to-end tests of HttpProvider against the real Concord server binary (started per test, in
// memory, on a free port) together with the npm y-websocket client: convergence across SSE, polling
// and WebSocket; a cut SSE connection that resumes without gaps or repeats; edits made while the
// server is unreachable; awareness both ways; JWT auth.
//
// Run: `cargo build -p concord-server --bins` at the repository root, then `npm test` here.
// The binary comes from $CONCORD_SERVER_BIN (default ../../target/debug/concord-server).
//
// Every wait polls a predicate against a deadline (waitFor); nothing sleeps hoping for a result.

import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { after, test } from 'node:test'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { HttpProvider, comparePositions } from '../dist/index.js'
import { serverBin, startServer } from './server.mjs'
import { FlakyFetch, defineRoots, docJson, waitConverged, waitFor } from './util.mjs'

// Every WebsocketProvider adds a process 'exit' listener.
process.setMaxListeners(100)

const TEST_TIMEOUT_MS = 120_000

/** Everything one test needs: the server, and clients torn down at the end. */
class Ctx {
  constructor (server) {
    this.server = server
    this.providers = []
  }

  /**
   * An HttpProvider on a fresh doc (or `opts.doc`), SSE unless `opts.transport` says otherwise,
   * on the test's server unless `opts.serverUrl` names another base.
   */
  http (name, { serverUrl = this.server.httpUrl, ...opts } = {}) {
    const doc = defineRoots(opts.doc ?? new Y.Doc())
    const provider = new HttpProvider(serverUrl, name, doc, opts)
    this.providers.push(provider)
    return provider
  }

  /** A y-websocket client; BroadcastChannel is off so that clients only talk through the server. */
  ws (name, { params = {}, path = '' } = {}) {
    const doc = defineRoots(new Y.Doc())
    const provider = new WebsocketProvider(this.server.wsUrl + path, name, doc, {
      WebSocketPolyfill: WebSocket,
      disableBc: true,
      resyncInterval: -1,
      params
    })
    this.providers.push(provider)
    return provider
  }

  async cleanup () {
    for (const p of this.providers) {
      try { p.destroy() } catch { /* already destroyed */ }
      try { p.doc.destroy() } catch { /* already destroyed */ }
    }
    await this.server.stop()
  }
}

/** A test with its own server; the server's stderr is appended to a failure. */
function serverTest (name, fn, { serverArgs = [], timeout = TEST_TIMEOUT_MS } = {}) {
  test(name, { timeout }, async (t) => {
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
      if (failure instanceof Error) failure.message += `\n--- server stderr (tail) ---\n${server.stderrTail()}`
      throw failure
    }
  })
}

const synced = (p) => p.synced
const describeProviders = (providers) => () => providers.map((p, i) =>
  `#${i} ${p.constructor.name} synced=${p.synced} status=${p.status ?? (p.wsconnected ? 'connected' : 'not connected')}`).join(', ')

async function waitAllSynced (providers) {
  await waitFor(() => providers.every(synced), { message: describeProviders(providers) })
}

serverTest('the server serves the HTTP API (GET /api/openapi.json is 200)', async (ctx) => {
  const res = await fetch(`${ctx.server.httpUrl}/api/openapi.json`)
  const body = await res.text()
  assert.equal(res.status, 200, `GET /api/openapi.json answered ${res.status}: ${body.slice(0, 300)}`)
  const spec = JSON.parse(body)
  assert.match(spec.openapi, /^3\./)
})

// (a)
serverTest('an SSE provider, a polling provider and a y-websocket client converge on text, map and array edits', async (ctx) => {
  // A name with a slash: one percent-encoded segment over HTTP, the raw path over WebSocket.
  const name = 'team/notes'
  const sse = ctx.http(name, { transport: 'sse' })
  const poll = ctx.http(name, { transport: 'poll' })
  const ws = ctx.ws(name)
  await waitAllSynced([sse, poll, ws])
  assert.equal(sse.transport, 'sse')
  assert.equal(poll.transport, 'poll')
  const clients = [['sse', sse.doc], ['poll', poll.doc], ['ws', ws.doc]]
  for (let round = 0; round < 5; round++) {
    for (const [who, doc] of clients) {
      const text = doc.getText('text')
      // At either end: never inside another client's word, so each word stays whole to check below.
      text.insert(round % 2 === 0 ? 0 : text.length, `${who}${round} `)
      doc.getMap('map').set(`${who}-${round}`, { round, who })
      doc.getArray('array').push([`${who}${round}`])
      if (round === 2) doc.getMap('map').delete(`${who}-0`)
    }
  }
  await waitConverged([sse.doc, poll.doc, ws.doc])
  const json = JSON.parse(docJson(ws.doc))
  assert.equal(json.array.length, 15)
  assert.equal(Object.keys(json.map).length, 12)
  for (const [who] of clients) {
    for (let round = 0; round < 5; round++) assert.ok(json.text.includes(`${who}${round} `), `${who}${round} in the text`)
  }
  await waitFor(() => !sse.hasUnsavedChanges && !poll.hasUnsavedChanges, { message: 'both HTTP providers saved' })
  // What is stored is what they converged on: a client that joins afterwards gets the same.
  const late = ctx.http(name, { transport: 'poll' })
  await waitConverged([late.doc, ws.doc])
})

serverTest('a server mounted under --path-prefix with its own --api-prefix: serverUrl carries the path, apiPrefix the rest', async (ctx) => {
  const name = 'mounted'
  const base = `${ctx.server.httpUrl}/collab/`
  const sse = ctx.http(name, { serverUrl: base, apiPrefix: 'v1' })
  const poll = ctx.http(name, { serverUrl: base, apiPrefix: '/v1/', transport: 'poll' })
  const ws = ctx.ws(name, { path: '/collab' })
  await waitAllSynced([sse, poll, ws])
  sse.doc.getText('text').insert(0, 'sse ')
  poll.doc.getMap('map').set('poll', true)
  ws.doc.getArray('array').push(['ws'])
  await waitConverged([sse.doc, poll.doc, ws.doc])
  // And nothing is served at the default prefix.
  const res = await fetch(`${ctx.server.httpUrl}/api/docs/${name}/state-vector`)
  assert.notEqual(res.status, 200)
  await res.arrayBuffer()
}, { serverArgs: ['--path-prefix', '/collab', '--api-prefix', '/v1'] })

// (b)
serverTest('a cut SSE connection resumes from its last event id: it gets everything, and no update twice', async (ctx) => {
  const name = 'cut'
  const flaky = new FlakyFetch()
  const sse = ctx.http(name, { fetch: flaky.fetch })
  const updateIds = []
  const syncIds = []
  sse.on('message', (m) => {
    if (m.kind === 'update') updateIds.push(m.id)
    if (m.kind === 'sync') syncIds.push(m.id)
  })
  const ws = ctx.ws(name)
  const poll = ctx.http(name, { transport: 'poll' })
  await waitAllSynced([sse, ws, poll])
  ws.doc.getText('text').insert(0, 'before ')
  await waitFor(() => sse.doc.getText('text').toString() === 'before ', { message: 'the first edit over SSE' })
  const streamsBefore = flaky.requests.filter((r) => r.url.includes('/events')).length

  // 1. The stream is dropped under the provider; the others keep editing meanwhile.
  flaky.cut()
  for (let i = 0; i < 10; i++) {
    ws.doc.getArray('array').push([`ws${i}`])
    poll.doc.getMap('map').set(`poll${i}`, i)
  }
  await waitConverged([sse.doc, ws.doc, poll.doc])

  // 2. The provider is offline for longer: the others' edits are stored while it cannot see them.
  flaky.offline = true
  await waitFor(() => sse.status === 'disconnected', { message: 'the SSE provider to notice it is offline' })
  for (let i = 0; i < 10; i++) {
    ws.doc.getText('text').insert(0, `w${i} `)
    poll.doc.getArray('array').push([`poll${i}`])
  }
  await waitConverged([ws.doc, poll.doc])
  await waitFor(() => !poll.hasUnsavedChanges, { message: 'the poll provider\'s edits to be stored' })
  assert.notEqual(docJson(sse.doc), docJson(ws.doc), 'the offline provider has not seen the edits yet')
  flaky.offline = false
  await waitConverged([sse.doc, ws.doc, poll.doc])

  const streams = flaky.requests.filter((r) => r.url.includes('/events'))
  assert.ok(streams.length >= streamsBefore + 2, `it reconnected (${streams.length} event requests)`)
  const resumed = streams.slice(streamsBefore).filter((r) => r.headers.get('last-event-id') !== null)
  assert.ok(resumed.length >= 1, 'the reconnections carried Last-Event-ID')
  for (const r of resumed) {
    assert.ok(new URL(r.url).searchParams.get('sv'), 'and the state vector')
  }
  assert.ok(updateIds.length >= 20, `update events received: ${updateIds.length}`)
  for (let i = 1; i < updateIds.length; i++) {
    assert.ok(comparePositions(updateIds[i - 1], updateIds[i]) < 0,
      `update event ids strictly increase; ${updateIds[i - 1]} then ${updateIds[i]} in ${updateIds.join(' ')}`)
  }
  // A resumed stream starts with the updates after Last-Event-ID, not with a sync event.
  assert.equal(syncIds.length, 1, `sync events: ${syncIds.join(' ')}`)
  assert.ok(comparePositions(syncIds[0], updateIds[0]) < 0, 'the sync event comes before every update event')
})

// (b), past a compaction
serverTest('resuming past a compaction: the stream starts with a sync event holding only what the client lacks', async (ctx) => {
  const name = 'compacted'
  const flaky = new FlakyFetch()
  const sse = ctx.http(name, { fetch: flaky.fetch })
  const messages = []
  sse.on('message', (m) => { if (m.kind !== 'awareness') messages.push(m) })
  const ws = ctx.ws(name)
  await waitAllSynced([sse, ws])
  ws.doc.getText('text').insert(0, 'seen ')
  await waitFor(() => sse.doc.getText('text').toString() === 'seen ', { message: 'the first edit over SSE' })
  flaky.offline = true
  await waitFor(() => sse.status === 'disconnected', { message: 'offline' })
  // One POST per edit: each is its own log entry, and --compact-after-updates 3 compacts them away.
  const writer = ctx.http(name, { transport: 'poll' })
  await waitFor(() => writer.synced)
  for (let i = 0; i < 12; i++) {
    writer.doc.getArray('array').push([i])
    await waitFor(() => !writer.hasUnsavedChanges, { message: `edit ${i} stored` })
  }
  const seenBefore = messages.length
  flaky.offline = false
  await waitConverged([sse.doc, ws.doc, writer.doc])
  const resumed = flaky.requests.filter((r) => r.url.includes('/events') && r.headers.get('last-event-id') !== null).at(-1)
  assert.ok(resumed, 'the reconnection carried Last-Event-ID')
  const after = messages.slice(seenBefore)
  assert.equal(after[0]?.kind, 'sync', `the resumed stream starts with a sync event: ${after.map((m) => `${m.kind} ${m.id}`).join(', ')}`)
  // The sync event is the diff against the sv the client sent: no struct it already had.
  const sv = Y.decodeStateVector(new Uint8Array(Buffer.from(new URL(resumed.url).searchParams.get('sv'), 'base64url')))
  for (const struct of Y.decodeUpdate(after[0].data).structs) {
    assert.ok(struct.id.clock >= (sv.get(struct.id.client) ?? 0), `struct ${struct.id.client}:${struct.id.clock} was already known (sv ${[...sv]})`)
  }
  const ids = messages.map((m) => m.id)
  for (let i = 1; i < ids.length; i++) assert.ok(comparePositions(ids[i - 1], ids[i]) < 0, `ids strictly increase: ${ids.join(' ')}`)
}, { serverArgs: ['--compact-after-updates', '3'] })

// (c)
serverTest('edits made while the server is unreachable arrive once it is back (SSE and polling)', async (ctx) => {
  const name = 'offline'
  const ws = ctx.ws(name)
  for (const transport of ['sse', 'poll']) {
    const flaky = new FlakyFetch()
    const p = ctx.http(name, { transport, fetch: flaky.fetch })
    await waitAllSynced([p, ws])
    flaky.offline = true
    await waitFor(() => p.status === 'disconnected', { message: `${transport}: the provider to notice it is offline` })
    p.doc.getText('text').insert(0, `${transport} offline `)
    p.doc.getMap('map').set(transport, 'offline')
    p.doc.getArray('array').push([transport])
    assert.equal(p.hasUnsavedChanges, true)
    // The POSTs fail and are retried; they must not be dropped.
    await waitFor(() => flaky.requests.filter((r) => r.method === 'POST' && r.url.endsWith('/update')).length >= 2, { message: `${transport}: retried POSTs` })
    assert.equal(p.hasUnsavedChanges, true)
    assert.equal(ws.doc.getMap('map').get(transport), undefined)
    let saved = false
    p.on('saved', () => { saved = true })
    flaky.offline = false
    await waitConverged([p.doc, ws.doc])
    await waitFor(() => saved && !p.hasUnsavedChanges, { message: `${transport}: saved` })
    assert.equal(ws.doc.getMap('map').get(transport), 'offline')
  }

  // A provider destroyed while offline loses its queue; the document (as if kept in IndexedDB)
  // still has the edits, and the next provider on it uploads what the server lacks.
  const doc = defineRoots(new Y.Doc())
  const flaky = new FlakyFetch()
  const first = ctx.http(name, { doc, fetch: flaky.fetch })
  await waitFor(() => first.synced)
  flaky.offline = true
  doc.getText('text').insert(0, 'kept locally ')
  doc.getMap('map').set('kept', true)
  first.destroy()
  assert.equal(ws.doc.getMap('map').get('kept'), undefined)
  const second = ctx.http(name, { doc, transport: 'poll' })
  await waitConverged([doc, ws.doc])
  await waitFor(() => !second.hasUnsavedChanges)
  assert.equal(ws.doc.getMap('map').get('kept'), true)
})

// (d)
serverTest('awareness: from the HTTP providers to y-websocket and back; destroy removes the state at once', async (ctx) => {
  const name = 'presence'
  const sse = ctx.http(name)
  // Polls return early only for document updates (the contract): a short timeout bounds how long
  // an awareness change waits for the next answer.
  const poll = ctx.http(name, { transport: 'poll', pollTimeout: 1 })
  const ws = ctx.ws(name)
  await waitAllSynced([sse, poll, ws])
  sse.awareness.setLocalStateField('user', { name: 'sse' })
  poll.awareness.setLocalStateField('user', { name: 'poll' })
  ws.awareness.setLocalStateField('user', { name: 'ws' })
  const userAt = (p, other) => p.awareness.getStates().get(other.doc.clientID)?.user?.name
  const everyone = [sse, poll, ws]
  await waitFor(() => everyone.every((p) => everyone.every((o) => userAt(p, o) === (o === sse ? 'sse' : o === poll ? 'poll' : 'ws'))), {
    message: () => 'every client to see every user; ' + everyone.map((p, i) =>
      `#${i} sees ${JSON.stringify([...p.awareness.getStates()].map(([id, s]) => [id, s.user?.name]))}`).join('; ')
  })
  // A change travels too, not just the first state.
  sse.awareness.setLocalStateField('user', { name: 'sse2' })
  await waitFor(() => userAt(ws, sse) === 'sse2', { message: 'the changed state at the y-websocket client' })

  // The removal is sent on destroy: it must arrive well before the 30 s awareness timeout.
  const id = sse.doc.clientID
  sse.destroy()
  await waitFor(() => !ws.awareness.getStates().has(id), { timeout: 10_000, message: 'the SSE client removed at the y-websocket client' })
  // A poll answer holds the room's presence as a whole: whoever left is gone at the poller too,
  // the HTTP client that said goodbye and the WebSocket client that just closed.
  await waitFor(() => !poll.awareness.getStates().has(id), { timeout: 10_000, message: 'the SSE client removed at the polling client' })
  const wsId = ws.doc.clientID
  ws.destroy()
  await waitFor(() => !poll.awareness.getStates().has(wsId), { timeout: 10_000, message: 'the closed y-websocket client removed at the polling client' })
  assert.ok(poll.awareness.getStates().has(poll.doc.clientID), 'the poller keeps its own state')
})

serverTest('contract: the first event of a new stream is `sync`, also when the room has awareness states', async (ctx) => {
  const name = 'first-event'
  const ws = ctx.ws(name)
  await waitFor(() => ws.synced)
  ws.awareness.setLocalStateField('user', { name: 'ws' })
  const watcher = ctx.http(name)
  await waitFor(() => watcher.awareness.getStates().has(ws.doc.clientID), { message: 'the state in the room' })
  const kinds = []
  const late = ctx.http(name, { connect: false })
  late.on('message', (m) => kinds.push(m.kind))
  late.connect()
  await waitFor(() => late.synced && late.awareness.getStates().has(ws.doc.clientID), { message: 'the late client synced, with the state' })
  assert.equal(kinds[0], 'sync', `ARCHITECTURE.md: "The first event is event: sync"; received ${kinds.join(', ')}`)
})

serverTest('awareness keeps flowing on a resumed stream, also when no document update comes', async (ctx) => {
  const name = 'quiet'
  const flaky = new FlakyFetch()
  const sse = ctx.http(name, { fetch: flaky.fetch })
  const ws = ctx.ws(name)
  await waitAllSynced([sse, ws])
  ws.doc.getText('text').insert(0, 'x')
  await waitFor(() => sse.doc.getText('text').toString() === 'x' && sse.lastEventId !== null, { message: 'one update over SSE' })
  ws.awareness.setLocalStateField('user', { name: 'ws1' })
  const userAtSse = () => sse.awareness.getStates().get(ws.doc.clientID)?.user?.name
  await waitFor(() => userAtSse() === 'ws1', { message: 'the first state over SSE' })
  const streams = () => flaky.requests.filter((r) => r.url.includes('/events'))
  const before = streams().length
  flaky.cut()
  await waitFor(() => streams().length > before && sse.status === 'connected', { message: 'the stream resumed' })
  assert.ok(streams().at(-1).headers.get('last-event-id'), 'resumed with Last-Event-ID')
  // Nobody edits the document: only awareness changes from here on.
  ws.awareness.setLocalStateField('user', { name: 'ws2' })
  await waitFor(() => userAtSse() === 'ws2', {
    timeout: 10_000,
    message: () => `the changed state over the resumed stream (ARCHITECTURE.md: "event: awareness carries awareness updates of the room"); the SSE client sees ${JSON.stringify(userAtSse())}`
  })
})

// (e)
const tempDirs = []
after(() => { for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true }) })
const secretDir = mkdtempSync(path.join(os.tmpdir(), 'concord-http-provider-'))
tempDirs.push(secretDir)
const secretFile = path.join(secretDir, 'secret')
writeFileSync(secretFile, randomBytes(24).toString('hex') + '\n')

/** A token from the server's own `token` subcommand. */
function mint (doc, access) {
  const out = execFileSync(serverBin, ['token', '--secret-file', secretFile, '--doc', `${doc}=${access}`], { encoding: 'utf8' })
  const token = out.trim().split('\n')[0]
  assert.match(token, /^[\w-]+\.[\w-]+\.[\w-]+$/, 'a compact JWT')
  return token
}

serverTest('auth: a token works, none is a connection-error, a read-only token cannot write', async (ctx) => {
  const name = 'secret/doc'
  const token = mint(name, 'write')
  const sse = ctx.http(name, { token })
  const poll = ctx.http(name, { transport: 'poll', token, tokenInQuery: true })
  const ws = ctx.ws(name, { params: { token } })
  await waitAllSynced([sse, poll, ws])
  sse.doc.getText('text').insert(0, 'from sse ')
  poll.doc.getMap('map').set('poll', 1)
  ws.doc.getArray('array').push(['ws'])
  await waitConverged([sse.doc, poll.doc, ws.doc])
  await waitFor(() => !sse.hasUnsavedChanges && !poll.hasUnsavedChanges)

  for (const transport of ['sse', 'poll']) {
    const anon = ctx.http(name, { transport })
    const errors = []
    anon.on('connection-error', (err) => errors.push(err))
    await waitFor(() => errors.some((e) => e.operation === (transport === 'sse' ? 'events' : 'poll')), { message: `${transport}: a connection-error without a token` })
    const err = errors.find((e) => e.operation === (transport === 'sse' ? 'events' : 'poll'))
    assert.equal(err.status, 401, err.message)
    assert.equal(anon.synced, false)
    assert.notEqual(anon.status, 'connected')
    anon.destroy()
  }

  const reader = ctx.http(name, { token: mint(name, 'read') })
  const errors = []
  reader.on('connection-error', (err) => errors.push(err))
  await waitConverged([reader.doc, ws.doc])
  reader.doc.getMap('map').set('reader', 'must not arrive')
  await waitFor(() => errors.some((e) => e.operation === 'update'), { message: 'the read-only POST to fail' })
  assert.equal(errors.find((e) => e.operation === 'update').status, 403)
  assert.equal(reader.hasUnsavedChanges, true, 'a refused update stays queued')
  assert.equal(ws.doc.getMap('map').get('reader'), undefined)
}, { serverArgs: ['--auth-secret-file', secretFile] })
