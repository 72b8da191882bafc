// Interop test: JWT authentication (401/403 before the upgrade), read-only access, the origin allow-list and token expiry, with real y-websocket clients and raw `ws` sockets.
//
// Every test starts its own server with `--auth-secret-file` pointing at a fresh temp file whose
// content ends with a newline; tokens are minted by the server binary's `token` subcommand from a
// second file holding the same secret *without* the newline, so a server that did not trim its
// secret would refuse every token. Some tokens are signed here with node:crypto instead (a token
// from another JWT implementation, an expired one), from the trimmed secret.
//
// y-websocket 3.1.0 notes (node_modules/y-websocket/src/y-websocket.js):
// - the y-protocols auth message `[2, 0, reason]` ends up in a module-private
//   `permissionDeniedHandler`, which only does `console.warn('Permission denied to access
//   <provider.url>.\n<reason>')` (the url includes ?token=...): there is no event, so the test
//   spies on console.warn, and a raw-socket test checks the frame itself;
// - an HTTP 401/403 upgrade response reaches the provider as 'connection-error' plus a
//   'connection-close' with code 1006, which it treats as transient: it retries forever, with
//   exponential backoff capped at maxBackoffTime (2.5 s);
// - close codes 4400-4499 are terminal: after the server's 4401 the provider emits 'closed'
//   and sets shouldConnect = false.

import assert from 'node:assert/strict'
import { createHmac, randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { after } from 'node:test'
import * as Y from 'yjs'
import { Awareness, applyAwarenessUpdate, encodeAwarenessUpdate } from 'y-protocols/awareness'
import WebSocket from 'ws'
import {
  DEFAULT_TIMEOUT_MS, externalServerUrl, mintWith, serverTest, waitFor, waitSynced
} from './harness.mjs'

const SKIP_EXTERNAL = externalServerUrl ? 'needs a server started with --auth-secret-file (INTEROP_SERVER_URL is set)' : false

// ---------------------------------------------------------------------------------------------
// Secrets and tokens

const tempDirs = []
after(() => { for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true }) })

/**
 * A fresh secret in a temp dir: `serverFile` (what the server reads: the secret plus a trailing
 * newline), `mintFile` (the same secret, no newline) and `otherFile` (a different secret).
 */
function newSecret () {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'concord-auth-'))
  tempDirs.push(dir)
  const secret = randomBytes(24).toString('hex')
  const file = (name, content) => {
    const p = path.join(dir, name)
    writeFileSync(p, content)
    return p
  }
  return {
    secret,
    serverFile: file('server-secret', `${secret}\n`),
    mintFile: file('mint-secret', secret),
    otherFile: file('other-secret', `${randomBytes(24).toString('hex')}\n`)
  }
}

/** The claims of a JWT (not verified). */
function claimsOf (token) {
  return JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString('utf8'))
}

/** An HS256 JWT signed here, independently of the server's own `token` subcommand. */
function signHs256 (secret, claims) {
  const part = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url')
  const body = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`
}

const nowSeconds = () => Math.floor(Date.now() / 1000)

// ---------------------------------------------------------------------------------------------
// Raw WebSocket connections

/**
 * Opens a raw `ws` socket to document `doc` (with `?token=` when `token` is given) and resolves
 * with the outcome of the upgrade: `{ kind: 'open', status, ws }` (every binary frame received is
 * pushed to `ws.frames`, and `ws.closed` resolves with `{ code, reason }`), `{ kind: 'refused',
 * status, body }` for a non-101 answer, or `{ kind: 'error', error }`.
 */
function rawConnect (sockets, serverUrl, doc, { token = null, headers = {}, origin = null } = {}) {
  const url = `${serverUrl}/${doc}` + (token === null ? '' : `?token=${encodeURIComponent(token)}`)
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers, ...(origin === null ? {} : { origin }) })
    sockets.push(ws)
    ws.frames = []
    ws.closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString('utf8') })))
    let settled = false
    let upgradeStatus = null
    const settle = (value) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      resolve(value)
    }
    const timer = setTimeout(() => {
      settled = true
      ws.terminate()
      reject(new Error(`no answer to the upgrade of ${url} within ${DEFAULT_TIMEOUT_MS} ms`))
    }, DEFAULT_TIMEOUT_MS)
    ws.on('message', (data) => ws.frames.push(new Uint8Array(data)))
    ws.on('upgrade', (res) => { upgradeStatus = res.statusCode })
    ws.on('open', () => settle({ kind: 'open', status: upgradeStatus, ws }))
    ws.on('unexpected-response', (_req, res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk) => { body += chunk })
      res.on('end', () => {
        settle({ kind: 'refused', status: res.statusCode, body })
        ws.terminate()
      })
      res.on('error', (error) => settle({ kind: 'error', error }))
    })
    // Also swallows the error terminate() reports for a socket that never opened.
    ws.on('error', (error) => settle({ kind: 'error', error }))
  })
}

const describeOutcome = (o) => o.kind === 'open'
  ? `opened (${o.status})`
  : o.kind === 'refused' ? `refused with ${o.status}: ${JSON.stringify(o.body)}` : `failed: ${o.error?.message}`

async function expectRefused (outcomePromise, status, bodyPattern, what) {
  const outcome = await outcomePromise
  assert.equal(outcome.kind, 'refused', `${what}: expected HTTP ${status}, but the upgrade ${describeOutcome(outcome)}`)
  assert.equal(outcome.status, status, `${what}: expected HTTP ${status}, got ${describeOutcome(outcome)}`)
  assert.match(outcome.body, bodyPattern, `${what}: the ${status} body gives the reason`)
  return outcome
}

async function expectOpens (outcomePromise, what) {
  const outcome = await outcomePromise
  assert.equal(outcome.kind, 'open', `${what}: expected the upgrade to succeed, but it ${describeOutcome(outcome)}`)
  assert.equal(outcome.status, 101, `${what}: upgrade status`)
  return outcome.ws
}

// y-protocols framing, for raw sockets: [messageType, syncMessageType?, varUint8Array payload].
function writeVarUint (out, n) {
  while (n > 0x7f) {
    out.push(0x80 | (n & 0x7f))
    n = Math.floor(n / 128)
  }
  out.push(n)
}

function readVarUint (buf, pos) {
  let n = 0
  let mult = 1
  for (;;) {
    const b = buf[pos++]
    n += (b & 0x7f) * mult
    mult *= 128
    if (b < 0x80) return { value: n, pos }
  }
}

function frame (prefix, payload) {
  const out = [...prefix]
  writeVarUint(out, payload.length)
  return Uint8Array.from([...out, ...payload])
}

const syncStep1 = (doc) => frame([0, 0], Y.encodeStateVector(doc))
const syncStep2 = (update) => frame([0, 1], update)
const syncUpdate = (update) => frame([0, 2], update)
const awarenessFrame = (update) => frame([1], update)

/** The payload of a `[type, ...prefix, varUint8Array]` frame (also: the bytes of a varString). */
function payloadOf (f, prefixLength) {
  const { value: length, pos } = readVarUint(f, prefixLength)
  return f.subarray(pos, pos + length)
}

const isSyncStep2 = (f) => f[0] === 0 && f[1] === 1
const isAuth = (f) => f[0] === 2

/**
 * Sends SyncStep1 on a raw socket and waits for the matching SyncStep2: everything the socket
 * sent before has then been processed by the server, and everything the server queued for it
 * before has arrived. Returns the SyncStep2 payload (the server's document, as an update).
 */
async function roundTrip (ws, what) {
  const before = ws.frames.filter(isSyncStep2).length
  ws.send(syncStep1(new Y.Doc()))
  await waitFor(() => ws.frames.filter(isSyncStep2).length > before, {
    message: () => `${what}: the server's SyncStep2 reply; frames so far: ${ws.frames.map((f) => `[${f.slice(0, 2)}…]`).join(' ')}`
  })
  return payloadOf(ws.frames.filter(isSyncStep2)[before], 2)
}

// ---------------------------------------------------------------------------------------------
// Tests

/**
 * Declares a serverTest whose server requires tokens signed with a fresh secret. `fn` gets
 * `{ ctx, t, secret, mint, connect }`: `mint(docs, opts)` mints with the right secret,
 * `connect(doc, opts)` opens a raw socket (see rawConnect) that is terminated at the end of the
 * test.
 */
function authTest (name, fn, { serverArgs = [] } = {}) {
  const secret = newSecret()
  const args = ['--auth-secret-file', secret.serverFile, ...serverArgs]
  serverTest(name, async (ctx, t) => {
    const sockets = []
    try {
      await fn({
        ctx,
        t,
        secret,
        mint: (docs, o) => mintWith(secret.mintFile, docs, o),
        connect: (doc, o) => rawConnect(sockets, ctx.server.url, doc, o)
      })
    } finally {
      for (const ws of sockets) ws.terminate()
    }
  }, { serverArgs: args, skip: SKIP_EXTERNAL })
}

/** Records console.warn calls (y-websocket's only report of permission-denied) until restored. */
function spyOnWarn () {
  const original = console.warn
  const calls = []
  console.warn = (...args) => { calls.push(args.map(String).join(' ')) }
  return { calls, restore: () => { console.warn = original } }
}

authTest('read-only: a reader receives writes, its own edits are refused with permission-denied, and it stays connected', async ({ ctx, mint }) => {
  const warn = spyOnWarn()
  try {
    const writer = ctx.client('doc', { params: { token: mint({ doc: 'write' }, { sub: 'writer' }) } })
    const reader = ctx.client('doc', { params: { token: mint({ doc: 'read' }, { sub: 'reader' }) } })
    await Promise.all([waitSynced(writer.provider), waitSynced(reader.provider)])
    const readerSocket = reader.provider.ws
    const readerStatuses = []
    reader.provider.on('status', ({ status }) => readerStatuses.push(status))
    const deniedWarnings = () => warn.calls.filter((w) => w.startsWith(`Permission denied to access ${reader.provider.url}.`))

    writer.doc.getText('text').insert(0, 'from-writer;')
    await waitFor(() => reader.doc.getText('text').toString().includes('from-writer;'), {
      message: () => `the reader to receive the writer's edit; it has ${JSON.stringify(reader.doc.getText('text').toString())}`
    })

    reader.doc.getText('text').insert(0, 'from-reader;')
    reader.doc.getMap('map').set('reader', 'was here')
    // Awareness after the edits, on the same connection: once the writer has the reader's
    // state, the server has processed the edits, and had it relayed them the writer would
    // have received them first.
    reader.awareness.setLocalStateField('user', { name: 'reader' })
    await waitFor(() => writer.awareness.getStates().get(reader.doc.clientID)?.user?.name === 'reader', {
      message: () => `the writer to see the reader's awareness; it has ${JSON.stringify([...writer.awareness.getStates()])}`
    })
    assert.equal(writer.doc.getText('text').toString(), 'from-writer;', 'the reader\'s text edit did not reach the writer')
    assert.equal(writer.doc.getMap('map').get('reader'), undefined, 'the reader\'s map edit did not reach the writer')

    const late = ctx.client('doc', { params: { token: mint({ doc: 'write' }, { sub: 'late' }) } })
    await waitSynced(late.provider)
    assert.equal(late.doc.getText('text').toString(), 'from-writer;', 'the server\'s document has the writer\'s edit and not the reader\'s')
    assert.deepEqual(late.doc.getMap('map').toJSON(), {}, 'the server\'s document has no map entry from the reader')

    writer.doc.getText('text').insert(writer.doc.getText('text').length, 'second-writer-edit;')
    await waitFor(() => reader.doc.getText('text').toString().includes('second-writer-edit;'), {
      message: () => `the reader to receive the writer's later edit; it has ${JSON.stringify(reader.doc.getText('text').toString())}`
    })
    await waitFor(() => late.doc.getText('text').toString() === 'from-writer;second-writer-edit;', {
      message: () => `the late writer to receive the writer's later edit; it has ${JSON.stringify(late.doc.getText('text').toString())}`
    })
    // The reader keeps its refused edits locally: nothing tells a Y.Doc to drop them.
    assert.match(reader.doc.getText('text').toString(), /from-reader;/)

    assert.ok(reader.provider.wsconnected, 'the reader is still connected')
    assert.equal(reader.provider.ws, readerSocket, 'the reader is still on its first connection (it never reconnected)')
    assert.deepEqual(readerStatuses, [], 'the reader\'s provider reported no status change after syncing')

    // The server's permission-denied was queued before it relayed 'second-writer-edit;' to the
    // reader, so it has arrived: exactly one, for several refused updates.
    const denied = deniedWarnings()
    assert.equal(denied.length, 1, `y-websocket reported permission-denied once for the reader; console.warn calls: ${JSON.stringify(warn.calls)}`)
    assert.match(denied[0], /read-only/, 'the permission-denied reason mentions read-only access')
    assert.ok(!warn.calls.some((w) => w.includes(writer.provider.url) || w.includes(late.provider.url)),
      `no permission-denied for the writers; console.warn calls: ${JSON.stringify(warn.calls)}`)
  } finally {
    warn.restore()
  }
})

// y-websocket answers the server's SyncStep1 with a SyncStep2 even when it has nothing to send
// (an empty update): the server must not count that as a write attempt, or every read-only
// client would be told permission-denied (a console.warn with its token in the url) on connect.
authTest('read-only: a reader that never edits is not told permission-denied', async ({ ctx, mint }) => {
  const warn = spyOnWarn()
  try {
    const writer = ctx.client('doc', { params: { token: mint({ doc: 'write' }) } })
    await waitSynced(writer.provider)
    writer.doc.getText('text').insert(0, 'x;')
    const reader = ctx.client('doc', { params: { token: mint({ doc: 'read' }) } })
    await waitSynced(reader.provider)
    // The reader's SyncStep2 reply went out before its awareness; once the writer has seen the
    // awareness and its next edit has reached the reader, any auth message has arrived.
    reader.awareness.setLocalStateField('user', { name: 'reader' })
    await waitFor(() => writer.awareness.getStates().has(reader.doc.clientID), { message: 'the writer to see the reader' })
    writer.doc.getText('text').insert(0, 'y;')
    await waitFor(() => reader.doc.getText('text').toString() === 'y;x;', { message: 'the reader to receive the second edit' })
    assert.deepEqual(warn.calls.filter((w) => w.startsWith('Permission denied')), [], 'no permission-denied for a reader that edited nothing')
  } finally {
    warn.restore()
  }
})

authTest('read-only: raw frames: step 2 and update from a reader are refused with one [2, 0, reason] message; the connection stays open', async ({ ctx, mint, connect }) => {
  const reader = await expectOpens(connect('raw-ro', { token: mint({ 'raw-ro': 'read' }) }), 'reader')
  const writer = await expectOpens(connect('raw-ro', { token: mint({ 'raw-ro': 'write' }) }), 'writer')

  const base = new Y.Doc()
  base.getText('text').insert(0, 'base;')
  writer.send(syncUpdate(Y.encodeStateAsUpdate(base)))
  await roundTrip(writer, 'writer')

  const mine = new Y.Doc()
  mine.getText('text').insert(0, 'reader-step2;')
  reader.send(syncStep2(Y.encodeStateAsUpdate(mine)))
  const sv = Y.encodeStateVector(mine)
  mine.getText('text').insert(0, 'reader-update;')
  reader.send(syncUpdate(Y.encodeStateAsUpdate(mine, sv)))
  mine.getMap('map').set('k', 'v')
  reader.send(syncUpdate(Y.encodeStateAsUpdate(mine)))
  const serverState = await roundTrip(reader, 'reader')

  const auth = reader.frames.filter(isAuth)
  assert.equal(auth.length, 1, `one auth message for three refused updates; got ${auth.map((f) => `[${f}]`).join(' ')}`)
  assert.equal(auth[0][1], 0, 'the auth message is permission-denied (type 0)')
  const reason = Buffer.from(payloadOf(auth[0], 2)).toString('utf8')
  assert.match(reason, /read-only/, `the reason is given: ${JSON.stringify(reason)}`)
  assert.equal(payloadOf(auth[0], 2).length + 2 + 1, auth[0].length, 'the frame is exactly [2, 0, varString(reason)] (one-byte length)')

  const seen = new Y.Doc()
  Y.applyUpdate(seen, serverState)
  assert.equal(seen.getText('text').toString(), 'base;', 'the server\'s document (its SyncStep2 to the reader) has none of the reader\'s content')
  assert.equal(reader.readyState, WebSocket.OPEN, 'the reader is still connected')

  // The writer got nothing from the reader (the reader's round trip came after its updates; the
  // writer's round trip now collects anything queued for it).
  await roundTrip(writer, 'writer')
  assert.ok(!writer.frames.some((f) => f[0] === 0 && f[1] === 2), 'no update was relayed to the writer')

  // The reader still receives others' updates.
  const more = new Y.Doc()
  Y.applyUpdate(more, Y.encodeStateAsUpdate(base))
  const before = Y.encodeStateVector(more)
  more.getText('text').insert(5, 'later;')
  const framesBefore = reader.frames.length
  writer.send(syncUpdate(Y.encodeStateAsUpdate(more, before)))
  await waitFor(() => reader.frames.slice(framesBefore).some((f) => f[0] === 0 && f[1] === 2), {
    message: 'the reader to receive the writer\'s later update'
  })
  const got = new Y.Doc()
  Y.applyUpdate(got, serverState)
  for (const f of reader.frames.slice(framesBefore).filter((f) => f[0] === 0 && f[1] === 2)) Y.applyUpdate(got, payloadOf(f, 2))
  assert.equal(got.getText('text').toString(), 'base;later;')
  assert.equal(reader.frames.filter(isAuth).length, 1, 'still only one auth message')
})

authTest('read-only: with --read-only-awareness false a reader\'s awareness is not relayed', async ({ mint, connect }) => {
  const reader = await expectOpens(connect('ro-aw', { token: mint({ 'ro-aw': 'read' }) }), 'reader')
  const writer = await expectOpens(connect('ro-aw', { token: mint({ 'ro-aw': 'write' }) }), 'writer')
  const awarenessOf = (clientID, name) => {
    const a = new Awareness(new Y.Doc())
    a.clientID = clientID
    // A first state has clock 0, which receivers ignore for a client they do not know yet
    // (y-protocols applies a state only when its clock is newer): set it twice.
    a.setLocalState({ user: { name } })
    a.setLocalState({ user: { name } })
    const update = encodeAwarenessUpdate(a, [clientID])
    a.destroy()
    return update
  }
  const seenBy = (ws) => {
    const a = new Awareness(new Y.Doc())
    a.setLocalState(null)
    for (const f of ws.frames.filter((f) => f[0] === 1)) applyAwarenessUpdate(a, payloadOf(f, 1), 'server')
    const states = new Map(a.getStates())
    a.destroy()
    return states
  }
  reader.send(awarenessFrame(awarenessOf(111111, 'reader')))
  writer.send(awarenessFrame(awarenessOf(222222, 'writer')))
  // The writer's state reaching the reader shows awareness is relayed at all.
  await waitFor(() => seenBy(reader).get(222222)?.user?.name === 'writer', { message: 'the reader to see the writer\'s awareness' })
  await roundTrip(reader, 'reader') // the server has processed the reader's awareness...
  await roundTrip(writer, 'writer') // ...and anything it relayed to the writer has arrived
  assert.ok(!seenBy(writer).has(111111), `the reader's awareness was not relayed; the writer saw ${JSON.stringify([...seenBy(writer)])}`)
}, { serverArgs: ['--read-only-awareness', 'false'] })

authTest('HTTP status matrix: 401 without a valid token, 403 without a grant, prefix patterns and the Bearer header', async ({ secret, mint, connect }) => {
  await expectRefused(connect('doc'), 401, /a token is required/, 'no token')
  await expectRefused(connect('doc', { token: 'not-a-jwt' }), 401, /token is not valid/, 'a malformed token')
  await expectRefused(connect('doc', { token: mintWith(secret.otherFile, { doc: 'write' }) }), 401,
    /token signature is invalid/, 'a token signed with another secret')

  // --ttl 0s is accepted and gives exp = now: the token is expired once that second is over.
  const zero = mint({ doc: 'write' }, { ttl: '0s' })
  const { exp } = claimsOf(zero)
  assert.ok(Math.abs(exp - nowSeconds()) <= 2, `--ttl 0s gives exp = now (exp ${exp}, now ${nowSeconds()})`)
  await waitFor(() => nowSeconds() > exp, { timeout: 5_000, message: 'the clock to pass the token\'s exp' })
  await expectRefused(connect('doc', { token: zero }), 401, /token expired/, 'a --ttl 0s token after its exp second')
  await expectRefused(connect('doc', { token: signHs256(secret.secret, { exp: nowSeconds() - 3600, docs: { doc: 'write' } }) }),
    401, /token expired/, 'a token that expired an hour ago')

  await expectRefused(connect('doc', { token: mint({ other: 'write', 'doc/*': 'write' }) }), 403,
    /token does not grant access to document/, 'a token for other documents')

  const team = mint({ 'team-a/*': 'write' })
  const notes = await expectOpens(connect('team-a/notes', { token: team }), 'team-a/* opening team-a/notes')
  await roundTrip(notes, 'team-a/notes')
  await expectRefused(connect('team-b/x', { token: team }), 403, /token does not grant access to document/, 'team-a/* opening team-b/x')
  await expectRefused(connect('team-a', { token: team }), 403, /token does not grant access to document/, 'team-a/* opening team-a')

  await expectOpens(connect('team-a/notes', { headers: { Authorization: `Bearer ${team}` } }), 'the token in an Authorization: Bearer header')
  await expectRefused(connect('team-b/x', { headers: { Authorization: `Bearer ${team}` } }), 403,
    /token does not grant access to document/, 'the Bearer token for a document it does not grant')
  await expectOpens(connect('team-a/notes', { token: 'not-a-jwt', headers: { Authorization: `Bearer ${team}` } }),
    'a valid Bearer header with a bad ?token= (the header wins)')

  // A token signed by another HS256 implementation, with the secret as trimmed by the server.
  await expectOpens(connect('doc', { token: signHs256(secret.secret, { exp: nowSeconds() + 3600, docs: { doc: 'read' } }) }),
    'a token signed with node:crypto')
})

authTest('HTTP 401 and y-websocket: the provider never connects (and keeps retrying)', async ({ ctx, secret }) => {
  const bad = mintWith(secret.otherFile, { doc: 'write' })
  const c = ctx.client('doc', { params: { token: bad } })
  const statuses = []
  const errors = []
  const closes = []
  c.provider.on('status', ({ status }) => statuses.push(status))
  c.provider.on('connection-error', (e) => errors.push(e?.message ?? String(e)))
  c.provider.on('connection-close', (e) => closes.push(e?.code ?? null))
  await waitFor(() => closes.length >= 2, {
    message: () => `two refused attempts; errors ${JSON.stringify(errors)}, closes ${JSON.stringify(closes)}`
  })
  assert.ok(errors.every((e) => /401/.test(e)), `every attempt failed with 401: ${JSON.stringify(errors)}`)
  assert.ok(!statuses.includes('connected') && !c.provider.synced && !c.provider.wsconnected, 'never connected')
})

authTest('origin allow-list: another Origin gets 403, an allowed one with a valid token opens', async ({ mint, connect }) => {
  const token = mint({ doc: 'write' })
  await expectRefused(connect('doc', { token, origin: 'http://evil.example' }), 403, /origin/, 'a disallowed origin with a valid token')
  await expectRefused(connect('doc', { origin: 'http://good.example' }), 401, /a token is required/, 'an allowed origin without a token')
  const ws = await expectOpens(connect('doc', { token, origin: 'http://good.example' }), 'an allowed origin with a valid token')
  await roundTrip(ws, 'allowed origin')
}, { serverArgs: ['--allowed-origin', 'http://good.example'] })

authTest('token expiry mid-session: the server closes the connection with 4401 "token expired"', async ({ ctx, mint, connect }) => {
  const token = mint({ doc: 'write' }, { ttl: '2s' })
  const { exp } = claimsOf(token)
  const ws = await expectOpens(connect('doc', { token }), 'a 2 s token')
  await roundTrip(ws, 'raw client')

  const c = ctx.client('doc', { params: { token } })
  const terminal = []
  const closeCodes = []
  c.provider.on('closed', (e) => terminal.push(e))
  c.provider.on('connection-close', (e) => closeCodes.push(e?.code ?? null))
  await waitSynced(c.provider)

  let timer
  const closed = await Promise.race([
    ws.closed,
    new Promise((resolve) => { timer = setTimeout(() => resolve(null), DEFAULT_TIMEOUT_MS) })
  ])
  clearTimeout(timer)
  assert.ok(closed, `the server closed the raw connection within ${DEFAULT_TIMEOUT_MS} ms`)
  assert.deepEqual(closed, { code: 4401, reason: 'token expired' })
  assert.ok(Date.now() >= exp * 1000, 'it was closed at expiry, not before')

  // y-websocket treats 4400-4499 as terminal: 'closed', and no more reconnects.
  await waitFor(() => terminal.length > 0, {
    message: () => `the provider's 'closed' event; connection-close codes ${JSON.stringify(closeCodes)}`
  })
  assert.deepEqual(terminal[0], { code: 4401, reason: 'token expired' })
  assert.equal(c.provider.shouldConnect, false, 'y-websocket stopped reconnecting')
})

// No leeway: a token is refused from its exp second on, so a token whose exp is the current
// second gets 401 (not an upgrade followed at once by 4401).
authTest('a token is refused from its exp second on (no leeway)', async ({ secret, connect }) => {
  const exp = nowSeconds()
  const outcome = await connect('doc', { token: signHs256(secret.secret, { exp, docs: { doc: 'write' } }) })
  assert.equal(outcome.kind, 'refused', `a token with exp = the current second (${exp}) was ${describeOutcome(outcome)}`)
  assert.equal(outcome.status, 401)
  assert.match(outcome.body, /token expired/)
})
