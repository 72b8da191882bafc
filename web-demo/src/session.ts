// One room: its Y.Doc, the offline copy in IndexedDB, the Awareness, and one provider over the
// chosen transport, which every view shares. It also works out what the header shows: whether
// the room is live, and whether every local edit is durable on the server.

import * as Y from 'yjs'
import { Awareness, removeAwarenessStates } from 'y-protocols/awareness'
import * as authProtocol from 'y-protocols/auth'
import * as syncProtocol from 'y-protocols/sync'
import * as decoding from 'lib0/decoding'
import * as encoding from 'lib0/encoding'
import { IndexeddbPersistence } from 'y-indexeddb'
import { WebsocketProvider, messageAuth, messageSync } from 'y-websocket'
import { HttpProvider } from '@concord/http-provider'

export type TransportName = 'ws' | 'sse' | 'poll'
export const TRANSPORTS: readonly TransportName[] = ['ws', 'sse', 'poll']

export type Connection = 'Live' | 'Connecting' | 'Offline'

export interface SaveState {
  saving: boolean
  /** Why, in a sentence (the status's tooltip). */
  detail: string
}

/**
 * What the header's statuses show: the session's connection, or the one of a view that has its
 * own (the rich text view's Hocuspocus provider).
 */
export interface StatusSource {
  readonly connection: Connection
  readonly save: SaveState
  /** What being offline means for edits, if not that they are kept on this device. */
  readonly offlineDetail?: string
  /** Calls `listener` whenever `connection` or `save` may have changed; returns the unsubscribe. */
  subscribe: (listener: () => void) => () => void
}

/**
 * What a connection shown in the header shares: its listeners, and whether the browser is
 * online. Chromium keeps open WebSockets (and streams) alive when the network is emulated
 * offline, and a real network change may take long to break them: the browser's own events
 * decide, and a subclass disconnects and reconnects in `wentOffline` and `cameOnline`.
 */
export abstract class BrowserConnection implements StatusSource {
  abstract readonly connection: Connection
  abstract readonly save: SaveState
  protected online = navigator.onLine
  private readonly listeners = new Set<() => void>()

  constructor () {
    window.addEventListener('online', this.onOnline)
    window.addEventListener('offline', this.onOffline)
  }

  /** Calls `listener` whenever `connection` or `save` may have changed; returns the unsubscribe. */
  subscribe (listener: () => void): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  protected abstract wentOffline (): void
  protected abstract cameOnline (): void

  /** Stops listening to the browser and drops every listener. */
  protected stopListening (): void {
    window.removeEventListener('online', this.onOnline)
    window.removeEventListener('offline', this.onOffline)
    this.listeners.clear()
  }

  protected notify (): void {
    for (const listener of this.listeners) listener()
  }

  private readonly onOffline = (): void => {
    this.online = false
    this.wentOffline()
    this.notify()
  }

  private readonly onOnline = (): void => {
    this.online = true
    this.cameOnline()
    this.notify()
  }
}

/** Concord's save acknowledgement: `[100, varUint8Array(varUint id)]` both ways. */
const MESSAGE_SAVED = 100

/** A save request unanswered this long means the server does not acknowledge saves. */
const ACK_TIMEOUT_MS = 5_000

const OFFLINE_DETAIL = 'Saved on this device; will sync when online'

/** Where the Concord server is: the directory the app was loaded from, on the same host. */
export interface ServerBase {
  /** `ws(s)://host/dir`, without a trailing slash. */
  ws: string
  /** `http(s)://host/dir`, without a trailing slash. */
  http: string
}

export function serverBase (loc: Location = location): ServerBase {
  // `/collab/` and `/collab/index.html` are both served from `/collab`.
  const dir = loc.pathname.replace(/\/[^/]*$/, '')
  const wsScheme = loc.protocol === 'https:' ? 'wss:' : 'ws:'
  return { ws: `${wsScheme}//${loc.host}${dir}`, http: `${loc.origin}${dir}` }
}

/**
 * Announces this client again on a new connection. When a connection ends, the others drop this
 * client's presence at its clock (its own removal message) or one above (the server's removal),
 * and Awareness ignores a state whose clock is not higher than the one it knows: without a bump
 * of two, a rejoining client stays invisible until its next renewals.
 */
export function rejoin (awareness: Awareness): void {
  const state = awareness.getLocalState()
  if (state === null) return
  awareness.setLocalState({ ...state })
  awareness.setLocalState({ ...state })
}

/** What a transport-specific link to the server reports; the session adds the browser's view. */
interface Link {
  /** live: synced with the server; connecting; disconnected (retrying or stopped). */
  readonly phase: 'live' | 'connecting' | 'disconnected'
  readonly save: SaveState
  connect: () => void
  disconnect: () => void
  destroy: () => void
}

/**
 * y-websocket, plus Concord's save acknowledgement: after each batch of local updates a save
 * request with a growing id (the number of local updates so far); the server echoes it once
 * everything the connection sent before it is durable.
 */
class WebsocketLink implements Link {
  private readonly provider: WebsocketProvider
  /** Local updates so far, and the most of them the server acknowledged. */
  private edits = 0
  private acked = 0
  private acks: 'unknown' | 'yes' | 'no' = 'unknown'
  /** Set when the server refuses this connection's edits (read-only access). */
  private refusal: string | null = null
  private requestQueued = false
  /** Runs out when the oldest unanswered request has waited ACK_TIMEOUT_MS. */
  private ackTimer: ReturnType<typeof setTimeout> | null = null

  constructor (
    url: string,
    room: string,
    private readonly doc: Y.Doc,
    awareness: Awareness,
    private readonly changed: () => void
  ) {
    // The room goes into the URL path; the server percent-decodes it (slashes are fine).
    // BroadcastChannel is off: every tab is its own client of the server, as in production,
    // and a tab that is offline stays offline instead of syncing through a sibling tab.
    this.provider = new WebsocketProvider(url, encodeURIComponent(room), doc, {
      awareness,
      connect: false,
      disableBc: true
    })
    const handlers = this.provider.messageHandlers
    const sync = handlers[messageSync]!
    handlers[messageSync] = (encoder, decoder, provider, emitSynced, type) => {
      const step1 = decoding.peekVarUint(decoder) === syncProtocol.messageYjsSyncStep1
      sync(encoder, decoder, provider, emitSynced, type)
      // The SyncStep2 that answers the server's SyncStep1 goes out right after this handler and
      // carries every edit the server lacks (made offline, or restored from IndexedDB): a save
      // request queued now follows it.
      if (step1 && this.unsaved) this.queueSaveRequest()
    }
    handlers[messageAuth] = (_encoder, decoder) => {
      // y-protocols' permission-denied message: Concord's answer to a read-only token. The
      // default handler only logs it; here it shows in the save status.
      authProtocol.readAuthMessage(decoder, doc, (_doc, reason) => {
        this.refusal = reason
        this.changed()
      })
    }
    handlers[MESSAGE_SAVED] = (_encoder, decoder) => {
      const id = decoding.readVarUint(decoding.createDecoder(decoding.readVarUint8Array(decoder)))
      this.acked = Math.max(this.acked, id)
      this.acks = 'yes'
      this.clearAckTimer()
      this.changed()
    }
    this.provider.on('status', ({ status }) => {
      // Emitted before y-websocket sends the local state on a new connection.
      if (status === 'connected') rejoin(awareness)
      // Requests on a closed connection are never answered: the next sync asks again.
      else this.clearAckTimer()
      this.changed()
    })
    this.provider.on('sync', () => this.changed())
    doc.on('update', this.onUpdate)
  }

  private get unsaved (): boolean {
    return this.acked < this.edits
  }

  get phase (): Link['phase'] {
    if (this.provider.synced) return 'live'
    return this.provider.wsconnecting || this.provider.wsconnected ? 'connecting' : 'disconnected'
  }

  get save (): SaveState {
    if (this.refusal !== null && this.unsaved) {
      return { saving: true, detail: `The server refuses edits from this client (${this.refusal}): they stay on this device` }
    }
    if (!this.unsaved) return { saving: false, detail: 'All changes are saved on the server' }
    if (this.phase === 'disconnected') return { saving: true, detail: OFFLINE_DETAIL }
    if (this.acks === 'no') {
      return { saving: false, detail: 'Sent to the server, which does not confirm saves: durability unknown' }
    }
    return { saving: true, detail: 'Waiting for the server to confirm that the latest changes are stored' }
  }

  connect (): void {
    this.provider.connect()
  }

  disconnect (): void {
    this.provider.disconnect()
  }

  destroy (): void {
    this.clearAckTimer()
    this.doc.off('update', this.onUpdate)
    this.provider.destroy()
  }

  private readonly onUpdate = (_update: Uint8Array, origin: unknown): void => {
    if (origin === this.provider) return
    // Everything not from the server is a local edit, IndexedDB's restored state included: it
    // may hold edits the server never got.
    this.edits++
    this.queueSaveRequest()
    this.changed()
  }

  /**
   * One request per batch: y-websocket sends each update as it happens (its handler runs before
   * this one), so a request sent after the current task covers all of them.
   */
  private queueSaveRequest (): void {
    if (this.requestQueued) return
    this.requestQueued = true
    queueMicrotask(() => {
      this.requestQueued = false
      const ws = this.provider.ws
      // Not connected: the edits travel in the next SyncStep2, and the request with them.
      if (ws === null || !this.provider.wsconnected || ws.readyState !== WebSocket.OPEN || !this.unsaved) return
      const inner = encoding.createEncoder()
      encoding.writeVarUint(inner, this.edits)
      const message = encoding.createEncoder()
      encoding.writeVarUint(message, MESSAGE_SAVED)
      encoding.writeVarUint8Array(message, encoding.toUint8Array(inner))
      ws.send(encoding.toUint8Array(message))
      if (this.ackTimer === null) this.armAckTimer()
    })
  }

  private armAckTimer (): void {
    // Only until the server has shown that it acknowledges: after that, a missing answer means
    // the store has not written the edits yet, and "Saving" is the truth.
    if (this.acks !== 'unknown') return
    this.ackTimer = setTimeout(() => {
      this.ackTimer = null
      if (this.acks === 'unknown') this.acks = 'no'
      this.changed()
    }, ACK_TIMEOUT_MS)
  }

  private clearAckTimer (): void {
    if (this.ackTimer !== null) clearTimeout(this.ackTimer)
    this.ackTimer = null
  }
}

/** Concord's HTTP provider (SSE or long-polling), whose POSTs are answered once durable. */
class HttpLink implements Link {
  private readonly provider: HttpProvider

  constructor (
    url: string,
    room: string,
    private readonly doc: Y.Doc,
    awareness: Awareness,
    transport: 'sse' | 'poll',
    private readonly changed: () => void
  ) {
    this.provider = new HttpProvider(url, room, doc, { transport, awareness, connect: false })
    this.provider.on('status', ({ status }) => {
      if (status === 'connected') rejoin(awareness)
      this.changed()
    })
    this.provider.on('sync', () => this.changed())
    this.provider.on('saved', () => this.changed())
    // Registered after the provider's own listener, which queues the update first.
    doc.on('update', this.onUpdate)
  }

  get phase (): Link['phase'] {
    const status = this.provider.status
    if (status === 'connected' && this.provider.synced) return 'live'
    return status === 'disconnected' ? 'disconnected' : 'connecting'
  }

  get save (): SaveState {
    if (!this.provider.hasUnsavedChanges) return { saving: false, detail: 'All changes are saved on the server' }
    if (this.phase === 'disconnected') return { saving: true, detail: OFFLINE_DETAIL }
    return { saving: true, detail: 'Sending the latest changes to the server' }
  }

  connect (): void {
    this.provider.connect()
  }

  disconnect (): void {
    this.provider.disconnect()
  }

  destroy (): void {
    this.doc.off('update', this.onUpdate)
    this.provider.destroy()
  }

  private readonly onUpdate = (_update: Uint8Array, origin: unknown): void => {
    if (origin !== this.provider) this.changed()
  }
}

export class Session extends BrowserConnection {
  readonly doc = new Y.Doc()
  readonly awareness = new Awareness(this.doc)
  private readonly persistence: IndexeddbPersistence
  private readonly link: Link

  constructor (readonly room: string, readonly transport: TransportName, base: ServerBase = serverBase()) {
    super()
    this.persistence = new IndexeddbPersistence(room, this.doc)
    const changed = (): void => this.notify()
    this.link = transport === 'ws'
      ? new WebsocketLink(base.ws, room, this.doc, this.awareness, changed)
      : new HttpLink(base.http, room, this.doc, this.awareness, transport, changed)
    // Connecting while the browser knows it is offline would only log failed requests.
    if (this.online) this.link.connect()
  }

  get connection (): Connection {
    if (!this.online) return 'Offline'
    switch (this.link.phase) {
      case 'live': return 'Live'
      case 'connecting': return 'Connecting'
      case 'disconnected': return 'Offline'
    }
  }

  get save (): SaveState {
    const save = this.link.save
    return !this.online && save.saving ? { saving: true, detail: OFFLINE_DETAIL } : save
  }

  destroy (): void {
    this.stopListening()
    // The provider sends the removal of this client's presence before it goes.
    this.link.destroy()
    void this.persistence.destroy()
    this.awareness.destroy()
    this.doc.destroy()
  }

  protected wentOffline (): void {
    this.link.disconnect()
    // Nobody else's presence can be known while offline.
    const others = Array.from(this.awareness.getStates().keys()).filter((id) => id !== this.doc.clientID)
    removeAwarenessStates(this.awareness, others, 'offline')
  }

  protected cameOnline (): void {
    this.link.connect()
  }
}
