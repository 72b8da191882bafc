// An in-process stand-in for Concord's HTTP API, reached through an injected `fetch`: it follows the
// contract in ARCHITECTURE.md ("HTTP API, Server-Sent Events and long-polling") closely enough to
// test the provider's own logic (queueing, merging, retries, resuming, fallback) deterministically,
// with failure injection the real server cannot offer. The end-to-end tests use the real server.

import * as Y from 'yjs'
import { Awareness, applyAwarenessUpdate, encodeAwarenessUpdate } from 'y-protocols/awareness'

const b64 = (bytes) => Buffer.from(bytes).toString('base64url')
const unb64 = (text) => new Uint8Array(Buffer.from(text, 'base64url'))
const json = (status, value) => new Response(JSON.stringify(value), { status, headers: { 'content-type': 'application/json' } })

export class FakeServer {
  /** Every server made, so a test file can close them all afterwards. */
  static all = []

  constructor ({ apiPrefix = '/api', token = null } = {}) {
    FakeServer.all.push(this)
    this.apiPrefix = apiPrefix
    this.token = token
    /** name -> { doc, awareness, log: [{ pos, update }], seq } */
    this.docs = new Map()
    /** Every request: { method, url: URL, headers: Headers, body } */
    this.requests = []
    /** Open SSE streams: { name, controller, closed } */
    this.streams = new Set()
    /** Waiting polls: { name, wake } */
    this.pollers = new Set()
    this.offline = false
    /** Per-route hooks: (request) => Response | Promise<Response> | undefined, to fail or hold a request. */
    this.hooks = []
    this.encoder = new TextEncoder()
    this.fetch = this.fetch.bind(this)
  }

  room (name) {
    let room = this.docs.get(name)
    if (!room) {
      const doc = new Y.Doc()
      room = { doc, awareness: new Awareness(doc), log: [], seq: 0 }
      room.awareness.setLocalState(null)
      this.docs.set(name, room)
    }
    return room
  }

  position (room) {
    return `${room.seq}.0`
  }

  /** Appends an update as the real server does once it is durable: a new position, relayed. */
  store (name, update) {
    const room = this.room(name)
    Y.applyUpdate(room.doc, update)
    room.seq++
    const pos = this.position(room)
    room.log.push({ pos, update })
    for (const s of this.streams) if (s.name === name) this.send(s, `event: update\nid: ${pos}\ndata: ${b64(update)}\n\n`)
    for (const p of this.pollers) if (p.name === name) p.wake()
    return pos
  }

  send (stream, text) {
    if (!stream.closed) stream.controller.enqueue(this.encoder.encode(text))
  }

  /** Errors every open SSE stream (what a dropped connection looks like to a reader). */
  cutStreams () {
    for (const s of this.streams) {
      s.closed = true
      s.controller.error(new TypeError('terminated'))
    }
    this.streams.clear()
  }

  /** Closes every open SSE stream cleanly (a server that ends the response). */
  endStreams () {
    for (const s of this.streams) {
      s.closed = true
      s.controller.close()
    }
    this.streams.clear()
  }

  async fetch (input, init = {}) {
    const url = new URL(String(input))
    const headers = new Headers(init.headers)
    const method = init.method ?? 'GET'
    const body = init.body === undefined ? null : new Uint8Array(init.body)
    const request = { method, url, headers, body, signal: init.signal }
    this.requests.push(request)
    // A real fetch answers in a later task, never in the same microtask queue: a client looping on
    // instant answers would otherwise starve every timer, the test's own included.
    await new Promise((resolve) => setImmediate(resolve))
    if (init.signal?.aborted) throw init.signal.reason ?? new DOMException('aborted', 'AbortError')
    if (this.offline) throw new TypeError('fetch failed')
    for (const hook of this.hooks) {
      const res = await hook(request)
      if (res !== undefined) return res
    }
    if (this.token !== null && headers.get('authorization') !== `Bearer ${this.token}`) {
      return json(401, { error: 'a token is required' })
    }
    const prefix = `${this.apiPrefix}/docs/`
    if (!url.pathname.startsWith(prefix)) return json(404, { error: 'no such route' })
    const [rawName, route = '', ...rest] = url.pathname.slice(prefix.length).split('/')
    if (rest.length > 0) return json(404, { error: 'no such route' })
    const name = decodeURIComponent(rawName)
    const room = this.room(name)
    const sv = url.searchParams.has('sv') ? unb64(url.searchParams.get('sv')) : undefined
    if (method === 'GET' && route === 'events') return this.events(name, room, sv, headers.get('last-event-id'), init.signal)
    if (method === 'GET' && route === 'poll') return this.poll(name, room, sv, url.searchParams, init.signal)
    if (method === 'GET' && route === 'state-vector') {
      return new Response(Y.encodeStateVector(room.doc), { headers: { 'content-type': 'application/octet-stream' } })
    }
    if (method === 'POST' && route === 'update') {
      this.store(name, body)
      return json(200, { stored: true })
    }
    if (method === 'POST' && route === 'awareness') {
      applyAwarenessUpdate(room.awareness, body, 'client')
      for (const s of this.streams) if (s.name === name) this.send(s, `event: awareness\ndata: ${b64(body)}\n\n`)
      return new Response(null, { status: 204 })
    }
    return json(404, { error: 'no such route' })
  }

  events (name, room, sv, lastEventId, signal) {
    const stream = { name, controller: null, closed: false }
    const body = new ReadableStream({
      start: (controller) => { stream.controller = controller },
      cancel: () => { stream.closed = true; this.streams.delete(stream) }
    })
    signal?.addEventListener('abort', () => {
      if (!stream.closed) {
        stream.closed = true
        stream.controller.error(signal.reason ?? new DOMException('aborted', 'AbortError'))
      }
      this.streams.delete(stream)
    }, { once: true })
    this.streams.add(stream)
    if (lastEventId) {
      for (const entry of room.log) {
        if (Number(entry.pos.split('.')[0]) > Number(lastEventId.split('.')[0])) {
          this.send(stream, `event: update\nid: ${entry.pos}\ndata: ${b64(entry.update)}\n\n`)
        }
      }
    } else {
      this.send(stream, `event: sync\nid: ${this.position(room)}\ndata: ${b64(Y.encodeStateAsUpdate(room.doc, sv))}\n\n`)
    }
    const states = [...room.awareness.getStates().keys()]
    if (states.length > 0) this.send(stream, `event: awareness\ndata: ${b64(encodeAwarenessUpdate(room.awareness, states))}\n\n`)
    return new Response(body, { headers: { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' } })
  }

  async poll (name, room, sv, params, signal) {
    const states = [...room.awareness.getStates().keys()]
    const awareness = states.length > 0 ? b64(encodeAwarenessUpdate(room.awareness, states)) : null
    if (!params.has('since')) {
      return json(200, { since: this.position(room), sync: b64(Y.encodeStateAsUpdate(room.doc, sv)), updates: [], awareness })
    }
    const since = Number(params.get('since').split('.')[0])
    const after = () => room.log.filter((e) => Number(e.pos.split('.')[0]) > since)
    if (after().length === 0) {
      // Tests use short timeouts; the real server's unit is seconds too.
      const timeoutMs = Number(params.get('timeout') ?? 25) * 1000
      await new Promise((resolve, reject) => {
        const poller = { name, wake: () => finish(resolve) }
        const timer = setTimeout(() => finish(resolve), timeoutMs)
        const onAbort = () => finish(() => reject(signal.reason ?? new DOMException('aborted', 'AbortError')))
        const finish = (then) => {
          clearTimeout(timer)
          this.pollers.delete(poller)
          signal?.removeEventListener('abort', onAbort)
          then()
        }
        this.pollers.add(poller)
        signal?.addEventListener('abort', onAbort, { once: true })
      })
    }
    const updates = after().map((e) => ({ id: e.pos, update: b64(e.update) }))
    return json(200, { since: this.position(room), sync: null, updates, awareness })
  }

  /** Ends the streams and destroys the rooms (an Awareness runs an interval timer). */
  close () {
    this.endStreams()
    for (const p of this.pollers) p.wake()
    for (const room of this.docs.values()) {
      room.awareness.destroy()
      room.doc.destroy()
    }
  }

  /** Requests whose path ends with `suffix`. */
  requestsTo (suffix) {
    return this.requests.filter((r) => r.url.pathname.endsWith(suffix))
  }
}
