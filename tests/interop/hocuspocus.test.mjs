// Interop test: the real npm `@hocuspocus/provider` (4.8.0, what Tiptap's collaboration guides use)
// against Concord's root URL. Several providers converge, also with y-websocket clients on the same
// document (edits and presence both ways); two documents share one socket while a third is refused
// and one is read-only, with the token given as an async function; SyncStatus ("saved") arrives
// only once the update is stored (the store is a real redis-server held with SIGSTOP); stateless
// messages go round (provider to provider with --relay-stateless, HTTP to provider); hostile frames
// on a multiplexed socket close only the document they name; Ping/Pong, QueryAwareness, Close and
// token expiry behave as the provider expects.
//
// @hocuspocus/provider 4.8.0 notes (node_modules/@hocuspocus/provider/src):
// - `HocuspocusProviderWebsocket` routes each incoming frame by its leading varString to the
//   provider of that name, and answers a one-byte Ping `[9]` with Pong `[10]`;
// - a provider sends Auth (its token) on open, then SyncStep1 (unsyncedChanges reset to 1) and
//   its awareness; each local update adds one unsynced change; SyncStatus(1) takes one away;
// - `authenticated` carries the scope ("read-write" / "readonly"), `authenticationFailed` the
//   reason of a PermissionDenied.

import assert from 'node:assert/strict'
import * as Y from 'yjs'
import WebSocket from 'ws'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as syncProtocol from 'y-protocols/sync'
import { Awareness, applyAwarenessUpdate, encodeAwarenessUpdate } from 'y-protocols/awareness'
import { HocuspocusProvider, HocuspocusProviderWebsocket } from '@hocuspocus/provider'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { after, test } from 'node:test'
import {
  defineRoots, docJson, externalServerUrl, mintWith, serverTest, startServer, waitConverged, waitFor,
  waitSynced, Ctx
} from './harness.mjs'
import { Redis } from './redis-server.mjs'

const SKIP_EXTERNAL = externalServerUrl ? 'starts servers with its own flags' : false
const httpBase = (ctx) => ctx.server.url.replace(/^ws:/, 'http:')

/** A shared socket to the server's root, torn down with the test. */
function socket (ctx) {
  const ws = new HocuspocusProviderWebsocket({ url: ctx.server.url, WebSocketPolyfill: WebSocket })
  ctx.providers.push({ destroy: () => ws.destroy() })
  return ws
}

/** A HocuspocusProvider on `name` over `websocketProvider` (its own socket by default). */
function hocuspocus (ctx, name, { websocketProvider = socket(ctx), token = null, doc = new Y.Doc() } = {}) {
  defineRoots(doc)
  const provider = new HocuspocusProvider({ websocketProvider, name: ctx.docName(name), document: doc, token })
  // A provider handed a socket does not attach itself to it.
  provider.attach()
  const events = { authenticated: [], failed: [], stateless: [], closes: [] }
  provider.on('authenticated', ({ scope }) => events.authenticated.push(scope))
  provider.on('authenticationFailed', ({ reason }) => events.failed.push(reason))
  provider.on('stateless', ({ payload }) => events.stateless.push(payload))
  provider.on('close', ({ event }) => events.closes.push(event))
  ctx.providers.push({ destroy: () => { provider.destroy(); doc.destroy() } })
  return { doc, provider, awareness: provider.awareness, events }
}

const saved = (c) => waitFor(() => c.provider.synced && c.provider.unsyncedChanges === 0,
  { message: () => `${c.provider.configuration.name}: unsyncedChanges ${c.provider.unsyncedChanges}` })

async function getJson (ctx, name, headers = {}) {
  const res = await fetch(`${httpBase(ctx)}/api/docs/${encodeURIComponent(ctx.docName(name))}?format=json&types=text:text,text:body,map:map,map:meta,array:array`, { headers })
  return { status: res.status, body: res.status === 200 ? await res.json() : await res.text() }
}

serverTest('Hocuspocus providers and y-websocket clients converge on one document, with presence both ways', async (ctx) => {
  const hp = [hocuspocus(ctx, 'rich'), hocuspocus(ctx, 'rich'), hocuspocus(ctx, 'rich')]
  const yws = ctx.client('rich')
  await Promise.all([...hp.map((c) => waitFor(() => c.provider.synced)), waitSynced(yws.provider)])
  hp[0].doc.getText('text').insert(0, 'from hocuspocus ')
  hp[1].doc.getMap('map').set('who', 'hp1')
  hp[2].doc.getArray('array').push([1, 2, 3])
  yws.doc.getText('text').insert(0, 'from y-websocket ')
  yws.doc.getMap('map').set('yws', true)
  // What y-prosemirror (Tiptap's collaboration) writes: an XmlFragment of elements.
  const paragraph = new Y.XmlElement('paragraph')
  paragraph.insert(0, [new Y.XmlText('from y-websocket')])
  yws.doc.getXmlFragment('prosemirror').insert(0, [paragraph])
  for (const c of hp) c.doc.getXmlFragment('prosemirror') // so that they compare it too
  await waitConverged([...hp.map((c) => c.doc), yws.doc])
  await Promise.all(hp.map(saved))
  const text = hp[0].doc.getText('text').toString()
  assert.ok(text.includes('from hocuspocus') && text.includes('from y-websocket'), text)

  // The HTTP API sees the Hocuspocus clients' edits like any other.
  const { status, body } = await getJson(ctx, 'rich')
  assert.equal(status, 200)
  assert.deepEqual(body.map, { who: 'hp1', yws: true })
  assert.deepEqual(body.array, [1, 2, 3])
  // Without `types` the server infers each root's kind from its content.
  const inferred = await fetch(`${httpBase(ctx)}/api/docs/${encodeURIComponent(ctx.docName('rich'))}?format=json`)
  assert.equal(inferred.status, 200)
  assert.deepEqual(await inferred.json(), {
    text,
    map: { who: 'hp1', yws: true },
    array: [1, 2, 3],
    prosemirror: '<paragraph>from y-websocket</paragraph>'
  })

  // Presence: each protocol sees the other's.
  hp[0].provider.setAwarenessField('user', { name: 'Ada (hocuspocus)' })
  yws.awareness.setLocalStateField('user', { name: 'Grace (y-websocket)' })
  const names = (awareness) => [...awareness.getStates().values()].map((s) => s.user?.name).filter(Boolean).sort()
  await waitFor(() => names(yws.awareness).includes('Ada (hocuspocus)'), { message: () => `y-websocket sees ${names(yws.awareness)}` })
  await waitFor(() => names(hp[1].awareness).includes('Grace (y-websocket)') && names(hp[1].awareness).includes('Ada (hocuspocus)'),
    { message: () => `hocuspocus sees ${names(hp[1].awareness)}` })
  // A provider that leaves takes its presence with it.
  hp[0].provider.destroy()
  await waitFor(() => !names(yws.awareness).includes('Ada (hocuspocus)'), { message: 'Ada to be gone' })
})

const tempDirs = []
after(() => { for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true }) })

function secretFile () {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'concord-hp-auth-'))
  tempDirs.push(dir)
  const file = path.join(dir, 'secret')
  writeFileSync(file, 'hocuspocus-interop-secret-0123456789')
  return file
}

test2('two documents over one socket, a third refused, one read-only, the token as an async function', async (ctx, secret) => {
  const token = mintWith(secret, { 'mux/write': 'write', 'mux/read': 'read' })
  const ws = socket(ctx)
  let asked = 0
  const writer = hocuspocus(ctx, 'mux/write', { websocketProvider: ws, token: async () => { asked++; return token } })
  const reader = hocuspocus(ctx, 'mux/read', { websocketProvider: ws, token })
  const refused = hocuspocus(ctx, 'mux/secret', { websocketProvider: ws, token })
  await waitFor(() => writer.events.authenticated.length && reader.events.authenticated.length && refused.events.failed.length,
    { message: () => JSON.stringify({ w: writer.events, r: reader.events, x: refused.events }) })
  assert.ok(asked >= 1, 'the token function was called')
  assert.deepEqual(writer.events.authenticated, ['read-write'])
  assert.deepEqual(reader.events.authenticated, ['readonly'])
  assert.match(refused.events.failed[0], /mux\/secret/, 'the reason names the document')
  assert.equal(refused.events.authenticated.length, 0)

  // The refusal touched nothing else: the writer edits and its edit is saved and readable.
  await waitFor(() => writer.provider.synced && reader.provider.synced)
  writer.doc.getText('text').insert(0, 'written')
  await saved(writer)
  const auth = { authorization: `Bearer ${token}` }
  assert.equal((await getJson(ctx, 'mux/write', auth)).body.text, 'written')

  // The read-only document syncs down, but its edits are refused (never saved, never stored).
  reader.doc.getText('text').insert(0, 'not allowed')
  const readerTokenFor = mintWith(secret, { 'mux/read': 'write' })
  const yws = ctx.client('mux/read', { params: { token: readerTokenFor } })
  yws.doc.getText('text').insert(0, 'by a writer')
  await waitFor(() => reader.doc.getText('text').toString().includes('by a writer'), { message: 'the reader to get the writer\'s edit' })
  assert.ok(reader.provider.unsyncedChanges > 0, 'a refused edit is never reported saved')
  await waitFor(async () => (await getJson(ctx, 'mux/read', auth)).body.text === 'by a writer',
    { message: 'the read-only edit to be absent from the stored document' })
  // And the socket is still fine for the writer.
  writer.doc.getText('text').insert(7, ' again')
  await saved(writer)
}, ['--connection-attempts-per-ip', '1000'])

/** A test with a server that checks tokens signed with a fresh secret file. */
function test2 (name, fn, extraArgs = []) {
  const secret = SKIP_EXTERNAL ? null : secretFile()
  serverTest(name, (ctx) => fn(ctx, secret), {
    serverArgs: SKIP_EXTERNAL ? [] : ['--auth-secret-file', secret, ...extraArgs],
    skip: SKIP_EXTERNAL
  })
}

test2('token expiry closes only the document it covered', async (ctx, secret) => {
  const short = mintWith(secret, { 'exp/a': 'write' }, { ttl: '2s' })
  const long = mintWith(secret, { 'exp/b': 'write' })
  const ws = socket(ctx)
  const a = hocuspocus(ctx, 'exp/a', { websocketProvider: ws, token: short })
  const b = hocuspocus(ctx, 'exp/b', { websocketProvider: ws, token: long })
  await waitFor(() => a.events.authenticated.length && b.events.authenticated.length)
  await waitFor(() => a.events.closes.length > 0, { message: 'a Close for the expired document' })
  assert.equal(a.events.closes[0].reason, 'token expired')
  assert.equal(b.events.closes.length, 0)
  // The provider of the closed document does not know it cannot send: more than the socket
  // holds for documents awaiting Auth (1,024 messages) must not cost it the other document.
  for (let i = 0; i < 1100; i++) a.doc.getText('text').insert(0, 'x')
  b.doc.getText('text').insert(0, 'still open')
  await saved(b)
  assert.equal(b.events.closes.length, 0)
  assert.equal(ws.status, 'connected')
}, ['--rate-messages', '100000', '--rate-message-burst', '100000'])

// The store is held back: SyncStatus must wait for it, while the edit is already relayed.
test('SyncStatus arrives only once the update is stored', { skip: SKIP_EXTERNAL, timeout: 120_000 }, async () => {
  const redis = await Redis.start()
  const ctx = new Ctx(await startServer(redis.args))
  try {
  const c = hocuspocus(ctx, 'durable')
  const watcher = ctx.client('durable')
  await Promise.all([saved(c), waitSynced(watcher.provider)])
  redis.child.kill('SIGSTOP')
  try {
    c.doc.getText('text').insert(0, 'held')
    // The server has the edit (another client got it) ...
    await waitFor(() => watcher.doc.getText('text').toString() === 'held', { message: 'the edit to be relayed' })
    // ... and has not claimed it saved: Redis cannot have stored it.
    assert.ok(c.provider.unsyncedChanges > 0, `unsyncedChanges ${c.provider.unsyncedChanges} while Redis is stopped`)
    assert.equal(c.provider.hasUnsyncedChanges, true)
  } finally {
    redis.child.kill('SIGCONT')
  }
  await saved(c)
  // Saved means in Redis: the document's stream holds the update.
  const keys = redis.cli('--scan', '--pattern', '*durable*')
  assert.ok(keys.length > 0, 'the document has keys in Redis')
  } finally {
    await ctx.cleanup()
    await redis.stop()
  }
})

test('across nodes on one Redis: Hocuspocus and y-websocket clients converge, stateless messages reach every node', { skip: SKIP_EXTERNAL, timeout: 120_000 }, async () => {
  const redis = await Redis.start()
  const a = new Ctx(await startServer([...redis.args, '--relay-stateless']))
  const b = new Ctx(await startServer([...redis.args, '--relay-stateless']))
  try {
    const onA = hocuspocus(a, 'nodes')
    const onB = hocuspocus(b, 'nodes')
    const ywsOnB = b.client('nodes')
    await Promise.all([saved(onA), saved(onB), waitSynced(ywsOnB.provider)])
    onA.doc.getText('text').insert(0, 'A ')
    ywsOnB.doc.getMap('map').set('from', 'B')
    await waitConverged([onA.doc, onB.doc, ywsOnB.doc])
    await saved(onA)

    onA.provider.sendStateless('relayed across nodes')
    await waitFor(() => onB.events.stateless.includes('relayed across nodes'), { message: 'the relay to reach node B' })
    const res = await fetch(`${b.server.url.replace(/^ws:/, 'http:')}/api/docs/nodes/stateless`, { method: 'POST', body: 'from B\'s API' })
    assert.deepEqual(await res.json(), { delivered: 1 }, 'one connection on node B itself')
    await waitFor(() => onA.events.stateless.includes('from B\'s API'), { message: 'the API message to reach node A' })
    assert.deepEqual(onA.events.stateless, ['from B\'s API'], 'nothing echoed back to its sender')
  } finally {
    await a.cleanup()
    await b.cleanup()
    await redis.stop()
  }
})

serverTest('stateless messages go from provider to provider and from the HTTP API to providers', async (ctx) => {
  const a = hocuspocus(ctx, 'chat')
  const b = hocuspocus(ctx, 'chat')
  const yws = ctx.client('chat')
  await Promise.all([saved(a), saved(b), waitSynced(yws.provider)])
  a.provider.sendStateless(JSON.stringify({ kind: 'ping', n: 1 }))
  await waitFor(() => b.events.stateless.length === 1, { message: 'b to get a\'s stateless message' })
  assert.deepEqual(JSON.parse(b.events.stateless[0]), { kind: 'ping', n: 1 })
  assert.equal(a.events.stateless.length, 0, 'not echoed to its sender')

  const res = await fetch(`${httpBase(ctx)}/api/docs/${ctx.docName('chat')}/stateless`, { method: 'POST', body: 'from the backend' })
  assert.equal(res.status, 200)
  assert.deepEqual(await res.json(), { delivered: 2 })
  await waitFor(() => a.events.stateless.includes('from the backend') && b.events.stateless.includes('from the backend'))
  // The y-websocket client, which has no such message, still works.
  yws.doc.getText('text').insert(0, 'after')
  await waitFor(() => a.doc.getText('text').toString() === 'after')
}, { serverArgs: ['--relay-stateless'] })

// ------------------------------------------------------------------------------------------------
// Raw sockets: the wire itself.

/** A raw Hocuspocus socket: frames in `received`, helpers to speak for several documents. */
async function rawSocket (ctx) {
  const ws = new WebSocket(ctx.server.url)
  ws.binaryType = 'nodebuffer'
  const raw = { ws, received: [], closed: null }
  ws.on('message', (data) => raw.received.push(new Uint8Array(data)))
  ws.on('close', (code, reason) => { raw.closed = { code, reason: reason.toString() } })
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  ctx.providers.push({ destroy: () => ws.terminate() })
  return raw
}

function frame (key, write) {
  const e = encoding.createEncoder()
  encoding.writeVarString(e, key)
  write(e)
  return encoding.toUint8Array(e)
}

const auth = (key, token = '') => frame(key, (e) => { encoding.writeVarUint(e, 2); encoding.writeVarUint(e, 0); encoding.writeVarString(e, token) })
const step1 = (key, doc) => frame(key, (e) => { encoding.writeVarUint(e, 0); syncProtocol.writeSyncStep1(e, doc) })
const update = (key, u) => frame(key, (e) => { encoding.writeVarUint(e, 0); syncProtocol.writeUpdate(e, u) })

/** The frames received for `key`, decoded as [type, decoder]. */
function messagesFor (raw, key) {
  const out = []
  for (const bytes of raw.received) {
    if (bytes.length === 1) continue
    const d = decoding.createDecoder(bytes)
    if (decoding.readVarString(d) !== key) continue
    out.push([decoding.readVarUint(d), d])
  }
  return out
}

const syncStatuses = (raw, key) => messagesFor(raw, key).filter(([t]) => t === 8).map(([, d]) => decoding.readVarUint(d))
const closesFor = (raw, key) => messagesFor(raw, key).filter(([t]) => t === 7).map(([, d]) => decoding.readVarString(d))

function textUpdate (text) {
  const doc = new Y.Doc()
  doc.getText('text').insert(0, text)
  return Y.encodeStateAsUpdate(doc)
}

serverTest('hostile frames on a multiplexed socket close only the document they name', async (ctx) => {
  const raw = await rawSocket(ctx)
  const [good, bad] = [ctx.docName('hostile/good'), ctx.docName('hostile/bad')]
  for (const key of [good, bad]) {
    raw.ws.send(auth(key))
    raw.ws.send(step1(key, new Y.Doc()))
  }
  await waitFor(() => messagesFor(raw, good).some(([t]) => t === 2) && messagesFor(raw, bad).some(([t]) => t === 2))
  const watcher = ctx.client('hostile/good')
  await waitSynced(watcher.provider)

  // The seven-byte allocation bomb, a sync type that does not exist, BroadcastStateless from a
  // client: each addressed to `bad`.
  raw.ws.send(frame(bad, (e) => { encoding.writeUint8Array(e, new Uint8Array([0, 2, 4, 255, 255, 255, 122])) }))
  await waitFor(() => closesFor(raw, bad).length === 1, { message: 'a Close for the bad document' })
  assert.match(closesFor(raw, bad)[0], /malformed/)

  // The good document goes on: an update is relayed and saved.
  raw.ws.send(update(good, textUpdate('still here')))
  await waitFor(() => watcher.doc.getText('text').toString() === 'still here')
  await waitFor(() => syncStatuses(raw, good).includes(1), { message: 'SyncStatus(1) for the good document' })
  assert.equal(raw.closed, null, 'the socket is open')

  // Reopened, the bad document works again; then other hostile bodies close it again.
  raw.ws.send(auth(bad))
  await waitFor(() => messagesFor(raw, bad).filter(([t]) => t === 2).length === 2)
  raw.ws.send(frame(bad, (e) => { encoding.writeVarUint(e, 6); encoding.writeVarString(e, 'x') }))
  await waitFor(() => closesFor(raw, bad).length === 2)
  raw.ws.send(auth(bad))
  await waitFor(() => messagesFor(raw, bad).filter(([t]) => t === 2).length === 3)
  raw.ws.send(frame(bad, (e) => { encoding.writeVarUint(e, 0); encoding.writeVarUint(e, 9) }))
  await waitFor(() => closesFor(raw, bad).length === 3)
  // Nothing of it was stored; the good document still answers.
  const { body } = await getJson(ctx, 'hostile/bad')
  assert.ok(!body?.text, JSON.stringify(body))
  raw.ws.send(update(good, textUpdate('!')))
  await waitFor(() => syncStatuses(raw, good).filter((s) => s === 1).length >= 2)

  // A frame that names no document at all closes the socket, with a reason.
  raw.ws.send(new Uint8Array([200, 1, 2]))
  await waitFor(() => raw.closed !== null, { message: 'the socket to close' })
  assert.equal(raw.closed.code, 1007)
  assert.match(raw.closed.reason, /malformed/)
})

serverTest('Ping, QueryAwareness, Close and the per-socket document limit', async (ctx) => {
  const raw = await rawSocket(ctx)
  const key = ctx.docName('wire')
  raw.ws.send(auth(key))
  raw.ws.send(step1(key, new Y.Doc()))
  // Someone else's presence, then a query for it.
  const other = ctx.client('wire')
  other.awareness.setLocalStateField('user', { name: 'other' })
  await waitSynced(other.provider)
  const queried = messagesFor(raw, key).length
  raw.ws.send(frame(key, (e) => encoding.writeVarUint(e, 3)))
  await waitFor(() => messagesFor(raw, key).slice(queried).some(([t, d]) => {
    if (t !== 1) return false
    const a = new Awareness(new Y.Doc())
    try {
      applyAwarenessUpdate(a, decoding.readVarUint8Array(d), null)
      return [...a.getStates().values()].some((s) => s.user?.name === 'other')
    } finally {
      a.destroy() // its check interval would keep the process alive
    }
  }), { message: 'an awareness answer to the query holding the other client' })

  // The server pings (keepalive 1 s here) with a bare [9]; a Pong keeps the socket.
  await waitFor(() => raw.received.some((b) => b.length === 1 && b[0] === 9), { message: 'a Ping' })
  raw.ws.send(new Uint8Array([10]))

  // Close from the client: the server leaves the room (the other client sees no one left).
  const aw = new Awareness(new Y.Doc())
  ctx.providers.push({ destroy: () => aw.destroy() })
  aw.setLocalState({ user: { name: 'raw' } })
  raw.ws.send(frame(key, (e) => { encoding.writeVarUint(e, 1); encoding.writeVarUint8Array(e, encodeAwarenessUpdate(aw, [aw.clientID])) }))
  await waitFor(() => [...other.awareness.getStates().values()].some((s) => s.user?.name === 'raw'))
  raw.ws.send(frame(key, (e) => encoding.writeVarUint(e, 7)))
  await waitFor(() => ![...other.awareness.getStates().values()].some((s) => s.user?.name === 'raw'), { message: 'the closed document to drop its presence' })

  // At most two documents on this socket (--max-documents-per-connection 2).
  for (const name of ['a', 'b', 'c']) raw.ws.send(auth(ctx.docName(`limit/${name}`)))
  await waitFor(() => messagesFor(raw, ctx.docName('limit/c')).some(([t]) => t === 2))
  const [[, d]] = messagesFor(raw, ctx.docName('limit/c'))
  assert.equal(decoding.readVarUint(d), 1, 'PermissionDenied')
  assert.match(decoding.readVarString(d), /too many documents/)
  assert.equal(raw.closed, null)
}, { serverArgs: ['--keepalive-interval', '1s', '--max-documents-per-connection', '2'] })
