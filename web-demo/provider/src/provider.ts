// HttpProvider: keeps a Y.Doc in sync with a Concord document over plain HTTP, for browsers behind
// proxies that kill WebSockets. It receives through Server-Sent Events (read with `fetch`) or
// long-polling, and sends every local update with a POST that the server answers once it is durable.
//
// The receiving side and the sending side are independent loops:
//
// - the receiver holds one SSE stream (or one poll request) at a time, remembers the position of the
//   last update it applied, and reconnects with backoff, resuming from that position (`Last-Event-ID`,
//   `since`) and sending its state vector (`sv`) so the server answers with exactly what is missing;
// - the sender POSTs queued local updates one request at a time, merging what queued up meanwhile,
//   and keeps a failed update at the head of the queue until a retry succeeds.
//
// Each time the receiver (re)connects, the provider also asks for the server's state vector and
// queues whatever the server lacks, so that edits made while offline reach it even when they never
// went through the queue (a document loaded from IndexedDB, a queue lost with a reload).

import * as Y from 'yjs'
import { Awareness, applyAwarenessUpdate, encodeAwarenessUpdate, removeAwarenessStates } from 'y-protocols/awareness'
import * as decoding from 'lib0/decoding'
import { ObservableV2 } from 'lib0/observable'
import { Backoff, type BackoffOptions } from './backoff.js'
import { fromBase64Url, toBase64Url } from './base64url.js'
import { type DeleteSet, deleteSetCovers, deleteSetOf, deleteSetOfUpdate, hasStructsBeyond } from './deleteset.js'
import { SseParser, type SseEvent } from './sse.js'

/** How updates are received. */
export type Transport = 'sse' | 'poll'

/** The receiving side's connection state (the sending side retries on its own). */
export type Status = 'connecting' | 'connected' | 'disconnected'

/** What one request is for, as reported in errors. */
export type Operation = 'events' | 'poll' | 'update' | 'awareness' | 'state-vector'

/** A received sync, update or awareness message, as emitted in the `message` event before it is applied. */
export interface ReceivedMessage {
  kind: 'sync' | 'update' | 'awareness'
  /** The position (`SEQ.INDEX`) the message brings the document to; null for awareness. */
  id: string | null
  data: Uint8Array
  transport: Transport
}

/** Options of {@link HttpProvider}. */
export interface HttpProviderOptions {
  /** How to receive updates. Default `'sse'`. */
  transport?: Transport
  /**
   * Start with SSE and switch to polling after this many SSE attempts in a row that failed (true
   * means 3), or at once when the server answers the events request with something that is not an
   * event stream (what a proxy's error page looks like). Default false.
   */
  fallback?: boolean | number
  /** A JWT sent as `Authorization: Bearer` on every request. */
  token?: string | null
  /** Also send the token as the `token` query parameter. Default false. */
  tokenInQuery?: boolean
  /** The Awareness to keep in sync; by default the provider creates one (`provider.awareness`). */
  awareness?: Awareness
  /** Extra query parameters sent with every request. */
  params?: Record<string, string>
  /** The fetch to use. Default `globalThis.fetch`. */
  fetch?: typeof fetch
  /** Where the HTTP API is mounted. Default `'/api'`. */
  apiPrefix?: string
  /** Connect at once. Default true; otherwise call `connect()`. */
  connect?: boolean
  /** The reconnection and retry schedule (y-websocket's by default: 100 ms doubling to 2.5 s). */
  backoff?: BackoffOptions
  /** Randomness for the backoff jitter, in [0, 1). Default `Math.random`. */
  random?: () => number
  /** Seconds a poll may wait on the server for an update. Default 25 (the server allows up to 60). */
  pollTimeout?: number
  /** An SSE stream silent (no event, no heartbeat) for this many ms is reconnected. Default 45,000. */
  idleTimeout?: number
  /** How long (ms) a connection must have lasted, having received data, to reset the backoff. Default 1,000. */
  stableTime?: number
  /** Deadline (ms) of the other requests: POSTs, the state vector. Default 60,000. */
  requestTimeout?: number
}

/** A failed request: network error, timeout, or an HTTP status other than 2xx. */
export class HttpProviderError extends Error {
  /** The HTTP status, or null when there was no response. */
  readonly status: number | null
  readonly operation: Operation

  constructor (operation: Operation, message: string, status: number | null = null, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'HttpProviderError'
    this.operation = operation
    this.status = status
  }

  /** An error for a non-2xx response, with the server's `{"error": "..."}` message when it sent one. */
  static async fromResponse (operation: Operation, res: Response): Promise<HttpProviderError> {
    let detail = ''
    try {
      const text = await res.text()
      try {
        const json: unknown = JSON.parse(text)
        detail = json !== null && typeof json === 'object' && typeof (json as { error?: unknown }).error === 'string'
          ? (json as { error: string }).error
          : text
      } catch {
        detail = text
      }
    } catch {
      // The body could not be read: the status says enough.
    }
    const tail = detail === '' ? '' : `: ${detail.slice(0, 500)}`
    return new HttpProviderError(operation, `${operation}: HTTP ${res.status}${tail}`, res.status)
  }
}

/** The events of {@link HttpProvider}. */
export interface HttpProviderEvents {
  status: (event: { status: Status }) => void
  /** True once the first sync event (or poll answer) of a connection was applied; false on disconnect. */
  sync: (synced: boolean) => void
  /** The same as `sync`, the name y-websocket also emits. */
  synced: (synced: boolean) => void
  /** Everything sent so far is durable on the server. */
  saved: () => void
  'connection-error': (error: HttpProviderError, provider: HttpProvider) => void
  /** The transport changed (the SSE to polling fallback). */
  transport: (transport: Transport) => void
  /** A message arrived (emitted before it is applied). */
  message: (message: ReceivedMessage) => void
}

const DEFAULT_FALLBACK_AFTER = 3

/** Bytes of an update with no structs and an empty delete set: nothing to send. */
function isEmptyUpdate (update: Uint8Array): boolean {
  return update.length === 2 && update[0] === 0 && update[1] === 0
}

/**
 * An AbortController aborted when `parent` aborts or after `timeout` ms (when given). `dispose`
 * detaches it from both, so long-lived parents do not collect listeners.
 */
function linkedController (parent: AbortSignal | null, timeout: number | null): { controller: AbortController, dispose: () => void } {
  const controller = new AbortController()
  const onAbort = (): void => controller.abort(parent?.reason)
  if (parent !== null) {
    if (parent.aborted) controller.abort(parent.reason)
    else parent.addEventListener('abort', onAbort, { once: true })
  }
  const timer = timeout === null
    ? null
    : setTimeout(() => controller.abort(new Error(`timed out after ${timeout} ms`)), timeout)
  return {
    controller,
    dispose: () => {
      parent?.removeEventListener('abort', onAbort)
      if (timer !== null) clearTimeout(timer)
    }
  }
}

/** Thrown by a session whose answer was not an event stream (a proxy's page, an old server). */
class NotAnEventStream extends HttpProviderError {}

/**
 * Keeps `doc` in sync with the document `docName` of the Concord server at `serverUrl`
 * (`http(s)://host[:port]`) over HTTP.
 */
export class HttpProvider extends ObservableV2<HttpProviderEvents> {
  readonly doc: Y.Doc
  readonly docName: string
  readonly awareness: Awareness
  /** The server's base URL, without a trailing slash. */
  readonly serverUrl: string

  private readonly options: Required<Pick<HttpProviderOptions,
    'apiPrefix' | 'pollTimeout' | 'idleTimeout' | 'stableTime' | 'requestTimeout' | 'tokenInQuery'>>

  private readonly ownsAwareness: boolean
  private readonly fetchFn: typeof fetch
  private readonly params: Record<string, string>
  private readonly token: string | null
  private readonly fallbackAfter: number | null
  private readonly receiveBackoff: Backoff
  private readonly sendBackoff: Backoff
  private readonly reconcileBackoff: Backoff

  private _transport: Transport
  private _status: Status = 'disconnected'
  private _synced = false
  private _lastEventId: string | null = null
  private _destroyed = false
  private shouldConnect = false
  /** Aborted by destroy(): every request is linked to it. */
  private readonly lifetime = new AbortController()
  /** Aborted by disconnect() (and destroy()): the receive loop, its requests and its waits. */
  private loop: { controller: AbortController, dispose: () => void } | null = null
  private sseFailures = 0
  /** When the current receiving connection first delivered data (null: it has not). */
  private receivingSince: number | null = null

  private pending: Uint8Array[] = []
  private inFlight: Uint8Array | null = null
  private sendTimer: ReturnType<typeof setTimeout> | null = null
  private reconcileTimer: ReturnType<typeof setTimeout> | null = null
  private reconcileGeneration = 0
  /**
   * Deletions the document had before this provider saw it, until a sync message shows that the
   * server has them too or they were queued. Everything later goes through the queue.
   */
  private unconfirmedDeletes: DeleteSet | null

  private awarenessInFlight = false
  private awarenessDirty = false

  constructor (serverUrl: string, docName: string, doc: Y.Doc, opts: HttpProviderOptions = {}) {
    super()
    const url = new URL(serverUrl)
    // ws:// and wss:// URLs (what a y-websocket setup already has) name the same server.
    if (url.protocol === 'ws:') url.protocol = 'http:'
    else if (url.protocol === 'wss:') url.protocol = 'https:'
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new Error(`HttpProvider needs an http(s) URL, got ${JSON.stringify(serverUrl)}`)
    }
    this.serverUrl = url.origin + url.pathname.replace(/\/+$/, '')
    this.docName = docName
    this.doc = doc
    this.ownsAwareness = opts.awareness === undefined
    this.awareness = opts.awareness ?? new Awareness(doc)
    const f = opts.fetch ?? globalThis.fetch
    if (typeof f !== 'function') throw new Error('HttpProvider needs fetch: pass options.fetch')
    // Called unbound, a browser's fetch throws "Illegal invocation".
    this.fetchFn = opts.fetch ?? globalThis.fetch.bind(globalThis)
    this.params = { ...(opts.params ?? {}) }
    this.token = opts.token ?? null
    const prefix = opts.apiPrefix ?? '/api'
    this.options = {
      apiPrefix: prefix === '' ? '' : '/' + prefix.replace(/^\/+|\/+$/g, ''),
      pollTimeout: opts.pollTimeout ?? 25,
      idleTimeout: opts.idleTimeout ?? 45_000,
      stableTime: opts.stableTime ?? 1_000,
      requestTimeout: opts.requestTimeout ?? 60_000,
      tokenInQuery: opts.tokenInQuery ?? false
    }
    this._transport = opts.transport ?? 'sse'
    this.fallbackAfter = opts.fallback === true
      ? DEFAULT_FALLBACK_AFTER
      : typeof opts.fallback === 'number' && opts.fallback > 0 ? opts.fallback : null
    const random = opts.random ?? Math.random
    this.receiveBackoff = new Backoff(opts.backoff, random)
    this.sendBackoff = new Backoff(opts.backoff, random)
    this.reconcileBackoff = new Backoff(opts.backoff, random)

    this.unconfirmedDeletes = deleteSetOf(doc)
    doc.on('update', this.onDocUpdate)
    doc.on('destroy', this.onDocDestroy)
    this.awareness.on('update', this.onAwarenessUpdate)
    if (opts.connect ?? true) this.connect()
  }

  /** The transport in use (polling after a fallback). */
  get transport (): Transport {
    return this._transport
  }

  get status (): Status {
    return this._status
  }

  /** Whether the current connection has delivered the server's state. */
  get synced (): boolean {
    return this._synced
  }

  /** The position of the last update received, which the next connection resumes from. */
  get lastEventId (): string | null {
    return this._lastEventId
  }

  /** True while local updates are queued or being sent: not yet durable on the server. */
  get hasUnsavedChanges (): boolean {
    return this.inFlight !== null || this.pending.length > 0
  }

  get destroyed (): boolean {
    return this._destroyed
  }

  /** Starts (or resumes) receiving and sending. */
  connect (): void {
    if (this._destroyed) throw new Error('HttpProvider was destroyed')
    if (this.shouldConnect) return
    this.shouldConnect = true
    this.loop = linkedController(this.lifetime.signal, null)
    void this.receiveLoop(this.loop.controller.signal)
    this.pump()
    this.sendLocalAwareness()
  }

  /** Stops receiving and sending; local updates keep queueing until `connect()`. */
  disconnect (): void {
    this.shouldConnect = false
    this.loop?.controller.abort(new Error('disconnected'))
    this.loop?.dispose()
    this.loop = null
    this.clearTimers()
    this.setSynced(false)
    this.setStatus('disconnected')
  }

  /**
   * Stops everything and cancels every request in flight. Local updates not yet saved (see
   * `hasUnsavedChanges`) are not sent. The local awareness state is set to null and its removal is
   * sent, so other clients drop this one's presence at once instead of after a timeout.
   */
  destroy (): void {
    if (this._destroyed) return
    const wasConnected = this.shouldConnect
    this.awareness.off('update', this.onAwarenessUpdate)
    if (this.awareness.getLocalState() !== null) {
      this.awareness.setLocalState(null)
      if (wasConnected) {
        // Not linked to `lifetime`, which is aborted just below: the removal must still go out.
        void this.postAwareness(encodeAwarenessUpdate(this.awareness, [this.doc.clientID]), null)
      }
    }
    this.disconnect()
    this._destroyed = true
    this.lifetime.abort(new Error('HttpProvider destroyed'))
    this.doc.off('update', this.onDocUpdate)
    this.doc.off('destroy', this.onDocDestroy)
    if (this.ownsAwareness) this.awareness.destroy()
    super.destroy()
  }

  // ---------------------------------------------------------------------------------------------
  // Requests

  /** `{base}{api}/docs/{name}{suffix}?{query}` with the extra params and, if asked, the token. */
  private url (suffix: string, query: Record<string, string> = {}): string {
    const all: Record<string, string> = { ...this.params }
    if (this.token !== null && this.options.tokenInQuery) all.token = this.token
    Object.assign(all, query)
    const qs = new URLSearchParams(all).toString()
    return `${this.serverUrl}${this.options.apiPrefix}/docs/${encodeURIComponent(this.docName)}${suffix}` +
      (qs === '' ? '' : '?' + qs)
  }

  private headers (extra: Record<string, string> = {}): Record<string, string> {
    const headers: Record<string, string> = { ...extra }
    if (this.token !== null) headers.Authorization = `Bearer ${this.token}`
    return headers
  }

  /**
   * One request, aborted when `parent` is (callers pass signals that the provider's lifetime
   * aborts, or null for the one request that must outlive it) or after `timeout` ms for the whole
   * exchange, body included: the caller reads the body inside `use`.
   */
  private async request<T> (
    operation: Operation,
    url: string,
    init: RequestInit,
    parent: AbortSignal | null,
    timeout: number | null,
    use: (res: Response) => Promise<T>
  ): Promise<T> {
    const { controller, dispose } = linkedController(parent, timeout)
    try {
      let res: Response
      try {
        res = await this.fetchFn(url, { ...init, signal: controller.signal })
      } catch (err) {
        throw new HttpProviderError(operation, `${operation}: ${describe(err, controller.signal)}`, null, { cause: err })
      }
      if (!res.ok) throw await HttpProviderError.fromResponse(operation, res)
      try {
        return await use(res)
      } catch (err) {
        if (err instanceof HttpProviderError) throw err
        throw new HttpProviderError(operation, `${operation}: ${describe(err, controller.signal)}`, res.status, { cause: err })
      }
    } finally {
      dispose()
    }
  }

  private reportError (err: unknown, operation: Operation): void {
    if (this._destroyed) return
    const error = err instanceof HttpProviderError
      ? err
      : new HttpProviderError(operation, `${operation}: ${String(err)}`, null, { cause: err })
    this.emit('connection-error', [error, this])
  }

  // ---------------------------------------------------------------------------------------------
  // Receiving

  private async receiveLoop (loop: AbortSignal): Promise<void> {
    while (!loop.aborted) {
      if (this._status !== 'connected') this.setStatus('connecting')
      // One controller per attempt, so that the idle timer (or a stream's end) can abort just it.
      const attempt = linkedController(loop, null)
      this.receivingSince = null
      const transport = this._transport
      let notAnEventStream = false
      try {
        if (transport === 'sse') await this.sseSession(attempt.controller)
        else await this.pollSession(attempt.controller.signal)
      } catch (err) {
        if (loop.aborted) return
        notAnEventStream = err instanceof NotAnEventStream
        this.reportError(err, transport === 'sse' ? 'events' : 'poll')
      } finally {
        attempt.controller.abort()
        attempt.dispose()
      }
      if (loop.aborted) return
      this.setSynced(false)
      this.setStatus('disconnected')
      const lasted = this.receivingSince !== null && Date.now() - this.receivingSince >= this.options.stableTime
      if (lasted) {
        this.receiveBackoff.reset()
        this.sseFailures = 0
      } else if (transport === 'sse') {
        this.sseFailures++
      }
      if (transport === 'sse' && this.fallbackAfter !== null &&
          (notAnEventStream || this.sseFailures >= this.fallbackAfter)) {
        this._transport = 'poll'
        this.receiveBackoff.reset()
        this.emit('transport', ['poll'])
        continue
      }
      await sleep(this.receiveBackoff.next(), loop)
    }
  }

  /** One SSE connection, until the stream ends or fails (it always ends with a throw). */
  private async sseSession (attempt: AbortController): Promise<void> {
    const query: Record<string, string> = { sv: toBase64Url(Y.encodeStateVector(this.doc)) }
    const extra: Record<string, string> = { Accept: 'text/event-stream' }
    const resuming = this._lastEventId !== null
    if (this._lastEventId !== null) extra['Last-Event-ID'] = this._lastEventId
    // No deadline for the stream as a whole: the idle timer below watches it instead.
    await this.request('events', this.url('/events', query), { headers: this.headers(extra) }, attempt.signal, null, async (res) => {
      const type = res.headers.get('content-type') ?? ''
      if (!/^text\/event-stream\b/i.test(type) || res.body === null) {
        await res.body?.cancel().catch(() => {})
        throw new NotAnEventStream('events', `events: expected text/event-stream, got ${JSON.stringify(type)} (HTTP ${res.status})`, res.status)
      }
      const reader = res.body.getReader()
      // Aborting the request should error the body, but not every fetch implementation does
      // that: cancelling the reader too makes any abort (idle timer, disconnect, destroy) end it.
      const cancel = (): void => { reader.cancel(attempt.signal.reason).catch(() => {}) }
      attempt.signal.addEventListener('abort', cancel, { once: true })
      const parser = new SseParser()
      let idle: ReturnType<typeof setTimeout> | null = null
      const armIdle = (): void => {
        if (idle !== null) clearTimeout(idle)
        idle = setTimeout(() => {
          attempt.abort(new Error(`no event or heartbeat for ${this.options.idleTimeout} ms`))
        }, this.options.idleTimeout)
      }
      armIdle()
      this.onReceiverUp()
      // A resumed stream starts with the updates after Last-Event-ID and no sync event: the
      // document is as synced as it was, plus whatever arrives next.
      if (resuming) this.setSynced(true)
      try {
        for (;;) {
          const { done, value } = await reader.read()
          // A cancelled reader reports a clean end: the abort's reason is the real story.
          if (attempt.signal.aborted) throw attempt.signal.reason
          if (done) break
          if (this.receivingSince === null) this.receivingSince = Date.now()
          armIdle()
          for (const event of parser.push(value)) this.handleSseEvent(event)
        }
        for (const event of parser.end()) this.handleSseEvent(event)
      } finally {
        if (idle !== null) clearTimeout(idle)
        attempt.signal.removeEventListener('abort', cancel)
        reader.releaseLock()
      }
    })
    throw new HttpProviderError('events', 'events: the server ended the stream')
  }

  private handleSseEvent (event: SseEvent): void {
    switch (event.event) {
      case 'sync':
      case 'update': {
        const data = fromBase64Url(event.data)
        const id = event.hasId ? event.lastEventId : null
        this.emit('message', [{ kind: event.event, id, data, transport: 'sse' }])
        if (event.event === 'sync') this.checkDeletes(data)
        if (!isEmptyUpdate(data)) Y.applyUpdate(this.doc, data, this)
        if (id !== null) this._lastEventId = id
        if (event.event === 'sync') this.setSynced(true)
        break
      }
      case 'awareness': {
        const data = fromBase64Url(event.data)
        this.emit('message', [{ kind: 'awareness', id: null, data, transport: 'sse' }])
        applyAwarenessUpdate(this.awareness, data, this)
        break
      }
      default:
        // Events this version does not know are ignored, as EventSource would.
        break
    }
  }

  /** Long-polls until a request fails. */
  private async pollSession (signal: AbortSignal): Promise<void> {
    let first = true
    for (;;) {
      const query: Record<string, string> = {}
      if (this._lastEventId !== null) query.since = this._lastEventId
      query.timeout = String(this.options.pollTimeout)
      query.sv = toBase64Url(Y.encodeStateVector(this.doc))
      const deadline = (this.options.pollTimeout + 15) * 1000
      const started = Date.now()
      const body = await this.request('poll', this.url('/poll', query), { headers: this.headers({ Accept: 'application/json' }) },
        signal, deadline, async (res) => parsePollAnswer(await res.json()))
      if (signal.aborted) return
      if (first) {
        first = false
        this.onReceiverUp()
      }
      if (this.receivingSince === null) this.receivingSince = Date.now()
      // An empty answer long before the timeout means something in between does not hold long
      // polls (or the server ignores `timeout`): back off instead of polling in a tight loop.
      const hurried = body.sync === null && body.updates.length === 0 &&
        Date.now() - started < Math.min(1_000, this.options.pollTimeout * 500)
      if (!hurried) this.receiveBackoff.reset()
      if (body.sync !== null) {
        const data = fromBase64Url(body.sync)
        this.emit('message', [{ kind: 'sync', id: body.since, data, transport: 'poll' }])
        this.checkDeletes(data)
        if (!isEmptyUpdate(data)) Y.applyUpdate(this.doc, data, this)
      }
      for (const u of body.updates) {
        const data = fromBase64Url(u.update)
        this.emit('message', [{ kind: 'update', id: u.id, data, transport: 'poll' }])
        Y.applyUpdate(this.doc, data, this)
        this._lastEventId = u.id
      }
      // An answer's awareness is every state the room holds as of the answer, not the changes
      // since the last one: a remote client missing from it has left (or expired), and is
      // removed here rather than 30 s later by the awareness timeout.
      let present = new Set<number>()
      if (body.awareness !== null) {
        const data = fromBase64Url(body.awareness)
        this.emit('message', [{ kind: 'awareness', id: null, data, transport: 'poll' }])
        applyAwarenessUpdate(this.awareness, data, this)
        present = awarenessClients(data)
      }
      const gone = Array.from(this.awareness.getStates().keys())
        .filter((client) => client !== this.doc.clientID && !present.has(client))
      if (gone.length > 0) removeAwarenessStates(this.awareness, gone, this)
      this._lastEventId = body.since
      this.setSynced(true)
      if (hurried) await sleep(this.receiveBackoff.next(), signal)
    }
  }

  /** The receiver has a working connection: resend what waits. */
  private onReceiverUp (): void {
    this.setStatus('connected')
    // A send that is waiting out its backoff is retried now: the server is evidently back.
    if (this.sendTimer !== null) {
      clearTimeout(this.sendTimer)
      this.sendTimer = null
      this.pump()
    }
    this.sendLocalAwareness()
  }

  /**
   * A sync message carries the server's whole delete set (Yjs and yrs always encode all of it):
   * if it has every deletion the document came with, those need not be uploaded.
   */
  private checkDeletes (sync: Uint8Array): void {
    if (this.unconfirmedDeletes === null) return
    if (deleteSetCovers(deleteSetOfUpdate(sync), this.unconfirmedDeletes)) this.unconfirmedDeletes = null
  }

  /**
   * Once synced on a new connection: asks for the server's state vector and queues what the server
   * lacks (`encodeStateAsUpdate(doc, serverSv)`) when the document has structs beyond it, or still
   * has deletions from before the provider that the server was not seen to have. Within the
   * provider's life every local edit is queued and never dropped; this catches edits that bypassed
   * the queue (made before the provider, or with the queue lost).
   */
  private async reconcile (generation: number): Promise<void> {
    if (this.reconcileTimer !== null) {
      clearTimeout(this.reconcileTimer)
      this.reconcileTimer = null
    }
    // A document without structs has nothing the server could lack.
    if (this.doc.store.clients.size === 0) return
    try {
      const sv = await this.request('state-vector', this.url('/state-vector'), { headers: this.headers() },
        this.lifetime.signal, this.options.requestTimeout, async (res) => new Uint8Array(await res.arrayBuffer()))
      if (generation !== this.reconcileGeneration || !this.shouldConnect) return
      const ahead = hasStructsBeyond(Y.decodeStateVector(Y.encodeStateVector(this.doc)), Y.decodeStateVector(sv))
      if (ahead || this.unconfirmedDeletes !== null) {
        this.unconfirmedDeletes = null
        const diff = Y.encodeStateAsUpdate(this.doc, sv)
        if (!isEmptyUpdate(diff)) this.enqueue(diff)
      }
      this.reconcileBackoff.reset()
    } catch (err) {
      if (generation !== this.reconcileGeneration || !this.shouldConnect) return
      this.reportError(err, 'state-vector')
      this.reconcileTimer = setTimeout(() => {
        this.reconcileTimer = null
        if (generation === this.reconcileGeneration && this.shouldConnect) void this.reconcile(generation)
      }, this.reconcileBackoff.next())
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Sending

  private readonly onDocUpdate = (update: Uint8Array, origin: unknown): void => {
    if (origin === this) return
    this.enqueue(update)
  }

  private readonly onDocDestroy = (): void => {
    this.destroy()
  }

  private enqueue (update: Uint8Array): void {
    this.pending.push(update)
    this.pump()
  }

  /** Starts the next POST unless one is in flight or waiting out its backoff. */
  private pump (): void {
    if (this._destroyed || !this.shouldConnect || this.inFlight !== null || this.sendTimer !== null) return
    if (this.pending.length === 0) return
    const update = this.pending.length === 1 ? this.pending[0]! : Y.mergeUpdates(this.pending)
    this.pending = []
    this.inFlight = update
    void this.postUpdate(update)
  }

  private async postUpdate (update: Uint8Array): Promise<void> {
    try {
      await this.request('update', this.url('/update'), {
        method: 'POST',
        headers: this.headers({ 'Content-Type': 'application/octet-stream' }),
        // TypeScript's DOM types take only ArrayBuffer-backed arrays as a body; Yjs's are.
        body: update as Uint8Array<ArrayBuffer>
      }, this.lifetime.signal, this.options.requestTimeout, async (res) => { await res.arrayBuffer() })
    } catch (err) {
      if (this._destroyed) return
      this.reportError(err, 'update')
      // Never dropped: it goes first into the next merge.
      this.pending.unshift(update)
      this.inFlight = null
      this.sendTimer = setTimeout(() => {
        this.sendTimer = null
        this.pump()
      }, this.sendBackoff.next())
      return
    }
    this.inFlight = null
    this.sendBackoff.reset()
    if (this.pending.length === 0) this.emit('saved', [])
    else this.pump()
  }

  // ---------------------------------------------------------------------------------------------
  // Awareness

  /**
   * Local changes (and the Awareness's own renewal every 15 s, a `setLocalState` of the same
   * state) are sent; the remote states this provider applied are not.
   */
  private readonly onAwarenessUpdate = (
    { added, updated, removed }: { added: number[], updated: number[], removed: number[] },
    origin: unknown
  ): void => {
    if (origin === this) return
    const id = this.doc.clientID
    if (added.includes(id) || updated.includes(id) || removed.includes(id)) this.sendLocalAwareness(true)
  }

  /** Sends the local state; coalesces while a POST is in flight. */
  private sendLocalAwareness (force = false): void {
    if (!this.shouldConnect || this._destroyed) return
    if (!force && this.awareness.getLocalState() === null) return
    if (this.awarenessInFlight) {
      this.awarenessDirty = true
      return
    }
    this.awarenessInFlight = true
    this.awarenessDirty = false
    void this.postAwareness(encodeAwarenessUpdate(this.awareness, [this.doc.clientID]), this.lifetime.signal).finally(() => {
      this.awarenessInFlight = false
      if (this.awarenessDirty) this.sendLocalAwareness(true)
    })
  }

  /**
   * One awareness POST. A failure is reported, not retried: awareness is soft state, resent when
   * the receiver reconnects and renewed every 15 s anyway.
   */
  private async postAwareness (update: Uint8Array, parent: AbortSignal | null): Promise<void> {
    try {
      await this.request('awareness', this.url('/awareness'), {
        method: 'POST',
        headers: this.headers({ 'Content-Type': 'application/octet-stream' }),
        body: update as Uint8Array<ArrayBuffer>,
        keepalive: parent === null
      }, parent, parent === null ? 5_000 : this.options.requestTimeout, async (res) => { await res.arrayBuffer() })
    } catch (err) {
      this.reportError(err, 'awareness')
    }
  }

  // ---------------------------------------------------------------------------------------------
  // State

  private setStatus (status: Status): void {
    if (this._status === status) return
    this._status = status
    this.emit('status', [{ status }])
  }

  private setSynced (synced: boolean): void {
    if (this._synced === synced) return
    this._synced = synced
    // Each connection catches the server up once it has the server's state.
    if (synced) void this.reconcile(++this.reconcileGeneration)
    this.emit('synced', [synced])
    this.emit('sync', [synced])
  }

  private clearTimers (): void {
    if (this.sendTimer !== null) clearTimeout(this.sendTimer)
    this.sendTimer = null
    if (this.reconcileTimer !== null) clearTimeout(this.reconcileTimer)
    this.reconcileTimer = null
    this.reconcileGeneration++
  }
}

/** The polling endpoint's JSON, checked. */
interface PollAnswer {
  since: string
  sync: string | null
  updates: Array<{ id: string, update: string }>
  awareness: string | null
}

function parsePollAnswer (json: unknown): PollAnswer {
  const bad = (why: string): never => { throw new Error(`unexpected poll answer (${why}): ${JSON.stringify(json)?.slice(0, 300)}`) }
  if (json === null || typeof json !== 'object') return bad('not an object')
  const o = json as Record<string, unknown>
  if (typeof o.since !== 'string') return bad('since')
  const sync = o.sync ?? null
  if (sync !== null && typeof sync !== 'string') return bad('sync')
  const awareness = o.awareness ?? null
  if (awareness !== null && typeof awareness !== 'string') return bad('awareness')
  const updates = o.updates ?? []
  if (!Array.isArray(updates)) return bad('updates')
  for (const u of updates) {
    if (u === null || typeof u !== 'object' || typeof u.id !== 'string' || typeof u.update !== 'string') return bad('updates[]')
  }
  return { since: o.since, sync, updates, awareness }
}

/** Resolves after `ms`, or at once when `signal` aborts. */
async function sleep (ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return
  await new Promise<void>((resolve) => {
    const done = (): void => {
      clearTimeout(timer)
      signal.removeEventListener('abort', done)
      resolve()
    }
    const timer = setTimeout(done, ms)
    signal.addEventListener('abort', done, { once: true })
  })
}

function describe (err: unknown, signal: AbortSignal): string {
  if (signal.aborted && signal.reason instanceof Error) return signal.reason.message
  if (err instanceof Error) {
    const cause = (err as { cause?: unknown }).cause
    return cause instanceof Error ? `${err.message} (${cause.message})` : err.message
  }
  return String(err)
}

/**
 * The clients with a state in an awareness update (y-protocols: a count, then per client its
 * id, clock and state as JSON, `null` for a removed one).
 */
function awarenessClients (update: Uint8Array): Set<number> {
  const decoder = decoding.createDecoder(update)
  const clients = new Set<number>()
  const count = decoding.readVarUint(decoder)
  for (let i = 0; i < count; i++) {
    const client = decoding.readVarUint(decoder)
    decoding.readVarUint(decoder) // clock
    if (decoding.readVarString(decoder) !== 'null') clients.add(client)
  }
  return clients
}
