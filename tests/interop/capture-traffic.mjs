// Records the frames real y-websocket clients send to a server, as seeds for Concord's fuzzer.
//
// Run: `cd tests/interop && npm ci && node capture-traffic.mjs`
// Writes: crates/concord-core/tests/data/js-traffic.bin, a sequence of records
//         [u32 little-endian length][frame bytes], one per binary frame a client sent.
//
// The server here is a minimal y-protocols relay in the shape of the reference y-websocket
// server (a Y.Doc and an Awareness per room; step 1 answered with step 2; updates applied and
// relayed; awareness relayed; a closed connection's awareness states removed). Concord is not
// involved: the point is to capture what the npm clients put on the wire, unfiltered.
//
// Deterministic: fixed client ids, one scripted action per step, and after each step the script
// waits until every frame sent in either direction has been received (counted on both ends of
// every socket) before the next one. Within a step, the frames of different clients (awareness
// echoes: y-websocket clients send back every state they receive) are ordered by client, then
// by sending order, so the output does not depend on which echo the server happened to read
// first. Nothing within a step depends causally on another client's frame of the same step.

import { writeFileSync, mkdirSync } from 'node:fs'
import http from 'node:http'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import * as Y from 'yjs'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { WebsocketProvider } from 'y-websocket'
import WebSocket, { WebSocketServer } from 'ws'

const here = path.dirname(fileURLToPath(import.meta.url))
const OUT = path.resolve(here, '..', '..', 'crates', 'concord-core', 'tests', 'data', 'js-traffic.bin')

const MSG_SYNC = 0
const MSG_AWARENESS = 1
const ROOM = 'fuzz-seed'
/** Fixed Yjs client ids (uint32, like Yjs's random ones): deterministic updates and varints of every width. */
const CLIENT_IDS = { ada: 1234567890, bob: 2718281828, cyd: 314159 }
const CLIENT_ORDER = Object.keys(CLIENT_IDS)

process.setMaxListeners(100)

// ---------------------------------------------------------------------------------------------
// Frame accounting shared by both ends of every socket (they live in this one process).

/**
 * wsid -> { client, sent, received, serverSent, serverReceived, clientOpen, serverOpen, seq }.
 * A socket counts as gone only once both ends saw it close: the server's close handler still
 * broadcasts the removal of the departed client's awareness state.
 */
const sockets = new Map()
let nextWsid = 1
/** Every frame a client sent, as the server received it: { step, client, seq, bytes }. */
const recorded = []
let step = 0

/** A `ws` client socket that tags its URL with an id and counts its frames. */
function countingSocketFor (client) {
  return class CountingWebSocket extends WebSocket {
    constructor (url, protocols) {
      const wsid = nextWsid++
      super(`${url}${url.includes('?') ? '&' : '?'}wsid=${wsid}`, protocols)
      const entry = { client, sent: 0, received: 0, serverSent: 0, serverReceived: 0, clientOpen: true, serverOpen: true, seq: 0 }
      sockets.set(wsid, entry)
      // Registered before the provider's handler, so the count is up to date by the time the
      // provider reacts (and possibly sends) in the same dispatch.
      this.on('message', () => { entry.received++ })
      this.on('close', () => { entry.clientOpen = false })
      this.wsid = wsid
    }

    send (data, ...rest) {
      sockets.get(this.wsid).sent++
      return super.send(data, ...rest)
    }
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls until `predicate` holds; a deadline turns a hang into an error. */
async function waitFor (predicate, what, timeout = 10_000) {
  const deadline = Date.now() + timeout
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(5)
  }
}

const gone = (s) => !s.clientOpen && !s.serverOpen

/** Every socket still open has delivered everything in both directions. */
const quiet = () => [...sockets.values()].every((s) =>
  gone(s) || (s.sent === s.serverReceived && s.serverSent === s.received))

/** Runs one scripted action, then waits until the network is quiet. */
async function act (description, action) {
  step++
  await action()
  await waitFor(quiet, `quiet after step ${step} (${description})`)
}

// ---------------------------------------------------------------------------------------------
// The recording relay server.

const room = { doc: new Y.Doc(), conns: new Map() } // conn -> Set of awareness client ids it controls
room.doc.gc = true
room.awareness = new awarenessProtocol.Awareness(room.doc)
room.awareness.setLocalState(null)

function send (conn, bytes) {
  if (conn.readyState !== WebSocket.OPEN) return
  sockets.get(conn.wsid).serverSent++
  conn.send(bytes)
}

room.doc.on('update', (update) => {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MSG_SYNC)
  syncProtocol.writeUpdate(encoder, update)
  const message = encoding.toUint8Array(encoder)
  for (const conn of room.conns.keys()) send(conn, message)
})

room.awareness.on('update', ({ added, updated, removed }, origin) => {
  const changed = added.concat(updated, removed)
  if (origin !== null && room.conns.has(origin)) {
    const controlled = room.conns.get(origin)
    for (const id of added) controlled.add(id)
    for (const id of removed) controlled.delete(id)
  }
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MSG_AWARENESS)
  encoding.writeVarUint8Array(encoder, awarenessProtocol.encodeAwarenessUpdate(room.awareness, changed))
  const message = encoding.toUint8Array(encoder)
  for (const conn of room.conns.keys()) send(conn, message)
})

function onMessage (conn, data) {
  const bytes = new Uint8Array(data)
  const entry = sockets.get(conn.wsid)
  entry.serverReceived++
  recorded.push({ step, client: entry.client, seq: entry.seq++, bytes: Buffer.from(bytes) })
  const decoder = decoding.createDecoder(bytes)
  const encoder = encoding.createEncoder()
  const type = decoding.readVarUint(decoder)
  if (type === MSG_SYNC) {
    encoding.writeVarUint(encoder, MSG_SYNC)
    syncProtocol.readSyncMessage(decoder, encoder, room.doc, conn)
    if (encoding.length(encoder) > 1) send(conn, encoding.toUint8Array(encoder))
  } else if (type === MSG_AWARENESS) {
    awarenessProtocol.applyAwarenessUpdate(room.awareness, decoding.readVarUint8Array(decoder), conn)
  } else {
    throw new Error(`unexpected message type ${type} from ${entry.client}`)
  }
}

const httpServer = http.createServer()
const wss = new WebSocketServer({ server: httpServer })
wss.on('connection', (conn, req) => {
  const url = new URL(req.url, 'http://localhost')
  if (url.pathname !== `/${ROOM}`) throw new Error(`unexpected room ${url.pathname}`)
  conn.wsid = Number(url.searchParams.get('wsid'))
  conn.binaryType = 'arraybuffer'
  room.conns.set(conn, new Set())
  conn.on('message', (data) => onMessage(conn, data))
  conn.on('close', () => {
    const controlled = room.conns.get(conn)
    room.conns.delete(conn)
    awarenessProtocol.removeAwarenessStates(room.awareness, [...controlled], null)
    sockets.get(conn.wsid).serverOpen = false
  })
  // As the reference server: step 1 first, then the current awareness states.
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MSG_SYNC)
  syncProtocol.writeSyncStep1(encoder, room.doc)
  send(conn, encoding.toUint8Array(encoder))
  const states = room.awareness.getStates()
  if (states.size > 0) {
    const aw = encoding.createEncoder()
    encoding.writeVarUint(aw, MSG_AWARENESS)
    encoding.writeVarUint8Array(aw, awarenessProtocol.encodeAwarenessUpdate(room.awareness, [...states.keys()]))
    send(conn, encoding.toUint8Array(aw))
  }
})
await new Promise((resolve) => httpServer.listen(0, '127.0.0.1', resolve))
const serverUrl = `ws://127.0.0.1:${httpServer.address().port}`

// ---------------------------------------------------------------------------------------------
// Clients.

function makeClient (name, { connect = true } = {}) {
  const doc = new Y.Doc()
  doc.clientID = CLIENT_IDS[name]
  const provider = new WebsocketProvider(serverUrl, ROOM, doc, {
    WebSocketPolyfill: countingSocketFor(name),
    disableBc: true,
    connect
  })
  return {
    name,
    doc,
    provider,
    awareness: provider.awareness,
    text: doc.getText('text'),
    meta: doc.getMap('meta'),
    list: doc.getArray('list'),
    xml: doc.getXmlFragment('prosemirror')
  }
}

const synced = (c) => c.provider.wsconnected && c.provider.synced
const sameDoc = (a, b) => Buffer.from(Y.encodeStateVector(a.doc)).equals(Buffer.from(Y.encodeStateVector(b.doc)))

/**
 * Types `s` into `text` one keystroke (one transaction, one update frame) at a time, moving the
 * awareness cursor every few keys as editor bindings do.
 */
function type (c, index, s, text = c.text) {
  let keys = 0
  for (const ch of s) {
    text.insert(index, ch)
    index += ch.length
    if (++keys % 4 === 0 && c.awareness.getLocalState() !== null) {
      c.awareness.setLocalStateField('cursor', { anchor: index, head: index })
    }
  }
}

/** Deletes `n` characters before `index` one backspace at a time. */
function backspace (c, index, n, text = c.text) {
  for (let i = 0; i < n; i++) text.delete(--index, 1)
}

const ada = makeClient('ada')
const bob = makeClient('bob')
await act('ada and bob connect', () => waitFor(() => synced(ada) && synced(bob), 'ada and bob synced'))

await act('ada announces herself', () => {
  ada.awareness.setLocalState({ user: { name: 'Ada', color: '#30bced', colorLight: '#30bced33' }, cursor: null, typing: false })
})
await act('bob announces himself', () => {
  bob.awareness.setLocalState({ user: { name: 'Bob ✏️', color: '#ee6352' }, cursor: null })
})

await act('ada types a line', () => {
  ada.awareness.setLocalStateField('typing', true)
  type(ada, 0, 'Hello wörld 😀, this is Concord.')
  ada.awareness.setLocalStateField('cursor', { anchor: { type: 'text', index: 33 }, head: { type: 'text', index: 33 } })
  ada.awareness.setLocalStateField('typing', false)
})
await act('bob formats, embeds and links', () => {
  bob.text.format(0, 5, { bold: true })
  bob.text.insertEmbed(6, { image: 'https://example.com/cat.png', width: 320, alt: 'a "cat"' })
  bob.text.insert(bob.text.length, ' Read more', { italic: true, link: { href: 'https://example.com/?a=1&b=2' } })
  bob.text.format(7, 6, { color: '#ff0000', size: 12.5 })
  bob.awareness.setLocalStateField('cursor', { anchor: 7, head: 13 })
})
await act('ada deletes with backspace and a selection', () => {
  for (let i = 0; i < 4; i++) ada.text.delete(ada.text.length - 1, 1)
  ada.text.delete(13, 5)
  type(ada, 13, 'Yjs')
  ada.text.format(0, 5, { bold: null })
})

await act('bob fills the meta map', () => {
  bob.meta.set('title', 'Fuzz seeds — «draft»')
  bob.meta.set('version', 3)
  bob.meta.set('ratio', 0.75)
  bob.meta.set('negative', -42)
  bob.meta.set('big', 2 ** 40)
  bob.meta.set('huge', 1.5e300)
  bob.meta.set('nothing', null)
  bob.meta.set('yes', true)
  bob.meta.set('no', false)
  bob.meta.set('tags', ['crdt', 'yjs', 42, null, { nested: true }])
  bob.meta.set('owner', { name: 'Bob', roles: ['editor', 'admin'], prefs: { theme: 'dark', fontSize: 14 } })
  bob.meta.set('blob', new Uint8Array([0, 1, 2, 127, 128, 254, 255]))
  bob.meta.set('empty', '')
})
await act('ada edits the map in one transaction', () => {
  ada.doc.transact(() => {
    ada.meta.set('version', 4)
    ada.meta.delete('nothing')
    ada.meta.set('title', 'Fuzz seeds')
    ada.meta.set('counts', { a: 1, b: [1, 2, [3, 4]] })
  })
})

await act('bob builds a list', () => {
  bob.list.push([1, 2, 3])
  bob.list.insert(0, ['first'])
  bob.list.insert(2, [{ inline: 'object' }, [true, false]])
  bob.list.push([new Uint8Array([9, 8, 7])])
})
await act('ada nests types in the list', () => {
  const card = new Y.Map()
  card.set('title', 'Card 1')
  card.set('done', false)
  ada.list.push([card])
  const inner = new Y.Array()
  inner.push(['a', 'b'])
  ada.list.insert(1, [inner])
  const note = new Y.Text('a nested note')
  ada.list.push([note])
})
await act('bob edits nested types and deletes from the list', () => {
  const card = bob.list.toArray().find((v) => v instanceof Y.Map)
  card.set('done', true)
  card.set('assignee', { name: 'Bob' })
  bob.list.delete(3, 2)
  const note = bob.list.toArray().find((v) => v instanceof Y.Text)
  note.insert(0, 'edited: ')
  note.format(0, 7, { bold: true })
})

await act('ada writes rich xml', () => {
  ada.doc.transact(() => {
    const heading = new Y.XmlElement('heading')
    heading.setAttribute('level', '1')
    heading.insert(0, [new Y.XmlText('Title')])
    const paragraph = new Y.XmlElement('paragraph')
    const body = new Y.XmlText()
    paragraph.insert(0, [body])
    ada.xml.insert(0, [heading, paragraph])
    body.insert(0, 'Some ')
    body.insert(5, 'bold', { bold: true })
    body.insert(9, ' text.')
    const list = new Y.XmlElement('bullet_list')
    const item = new Y.XmlElement('list_item')
    item.insert(0, [new Y.XmlText('one')])
    list.insert(0, [item])
    ada.xml.push([list])
  })
})
await act('bob edits the xml', () => {
  const paragraph = bob.xml.get(1)
  paragraph.setAttribute('align', 'center')
  const body = paragraph.get(0)
  body.insert(body.length, ' More.')
  body.format(0, 4, { italic: true })
  bob.xml.delete(0, 1)
})
await act('bob types into the xml paragraph and fixes a typo', () => {
  const body = bob.xml.get(0).get(0)
  type(bob, body.length, ' Typed into a paragraph, keu by key', body)
  backspace(bob, body.length, 10, body)
  type(bob, body.length, 'ey by key.', body)
})

// A late joiner with a local draft: its step 2 carries real content.
const cyd = makeClient('cyd', { connect: false })
cyd.doc.getMap('drafts').set('cyd', { text: 'written offline before the first connection', at: 1700000000000 })
cyd.text.insert(0, '[cyd] ')
await act('cyd connects with a draft', async () => {
  cyd.provider.connect()
  await waitFor(() => synced(cyd) && sameDoc(cyd, ada) && sameDoc(cyd, bob), 'cyd synced')
})
await act('cyd announces herself and types', () => {
  cyd.awareness.setLocalState({ user: { name: 'Cyd', color: '#6eeb83' }, typing: true, cursor: { anchor: 0, head: 0 } })
  type(cyd, cyd.text.length, ' — cyd was here')
  cyd.awareness.setLocalStateField('typing', false)
})
await act('cyd rewrites her sentence', () => {
  backspace(cyd, cyd.text.length, 9)
  type(cyd, cyd.text.length, 'rewrote this, ünïcødé and all ✓')
})

// Ada goes offline, everyone keeps editing, Ada comes back: step 1 / step 2 both ways.
await act('ada goes offline', async () => {
  ada.provider.disconnect()
  await waitFor(() => [...sockets.values()].every((s) => s.client !== 'ada' || gone(s)), 'ada closed')
})
await act('ada edits offline while bob and cyd edit online', () => {
  type(ada, 0, 'OFFLINE ')
  ada.meta.set('offline', { edits: 2, when: 'train' })
  ada.list.insert(0, ['from the train'])
  bob.text.insert(bob.text.length, ' (bob online)')
  bob.meta.set('version', 5)
  cyd.list.push([{ by: 'cyd' }])
})
await act('ada reconnects', async () => {
  ada.provider.connect()
  await waitFor(() => synced(ada) && sameDoc(ada, bob) && sameDoc(ada, cyd), 'ada resynced')
})
await act('ada undoes her last edits', () => {
  const undo = new Y.UndoManager([ada.text, ada.meta], { captureTimeout: 0 })
  ada.text.insert(0, '!!')
  ada.meta.set('undone', 1)
  undo.undo()
  undo.undo()
  undo.destroy()
})

await act('awareness: bob clears his state, cyd updates hers', () => {
  bob.awareness.setLocalState(null)
  cyd.awareness.setLocalStateField('cursor', { anchor: 3, head: 9 })
})
await act('bob comes back to awareness', () => {
  bob.awareness.setLocalState({ user: { name: 'Bob ✏️', color: '#ee6352' }, cursor: { anchor: 1, head: 1 } })
})

await act('everyone leaves', async () => {
  for (const c of [ada, bob, cyd]) c.provider.destroy()
  await waitFor(() => [...sockets.values()].every(gone), 'every socket closed')
})

for (const c of [ada, bob, cyd]) c.doc.destroy()
room.doc.destroy()
wss.close()
httpServer.close()

// ---------------------------------------------------------------------------------------------
// Output.

recorded.sort((a, b) =>
  a.step - b.step ||
  CLIENT_ORDER.indexOf(a.client) - CLIENT_ORDER.indexOf(b.client) ||
  a.seq - b.seq)
const parts = []
for (const { bytes } of recorded) {
  const len = Buffer.alloc(4)
  len.writeUInt32LE(bytes.length)
  parts.push(len, bytes)
}
const out = Buffer.concat(parts)
mkdirSync(path.dirname(OUT), { recursive: true })
writeFileSync(OUT, out)
const kinds = {}
for (const { bytes } of recorded) {
  const kind = bytes[0] === MSG_SYNC ? ['step1', 'step2', 'update'][bytes[1]] : bytes[0] === MSG_AWARENESS ? 'awareness' : `type ${bytes[0]}`
  kinds[kind] = (kinds[kind] || 0) + 1
}
console.log(`wrote ${recorded.length} frames (${out.length} bytes) to ${path.relative(process.cwd(), OUT)}: ${JSON.stringify(kinds)}`)
// Every provider, awareness and socket is closed, so the event loop drains and Node exits.
