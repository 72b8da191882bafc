// The rich text view: Tiptap on the room's `richtext` (a Y.XmlFragment), over the Hocuspocus
// protocol that Concord speaks at its root URL (@hocuspocus/provider, as Tiptap's collaboration
// guides use it). The view has a Y.Doc and a connection of its own, on the same document (room)
// as the other views, which stay on the session's y-websocket connection: the server keeps one
// room per document, so the rich text reaches every client of the room, whatever its protocol.
//
// While the view is open, the header shows this connection (Live once synced; Saved once the
// provider has no unsynced changes, which Concord acknowledges only when they are stored), and
// this user's presence lives in the provider's awareness: both protocols share a room's
// awareness, so the list shows the y-websocket users too, and the user is listed once.

import * as Y from 'yjs'
import type { Awareness } from 'y-protocols/awareness'
import { Editor } from '@tiptap/core'
import StarterKit from '@tiptap/starter-kit'
import Collaboration, { isChangeOrigin } from '@tiptap/extension-collaboration'
import CollaborationCaret from '@tiptap/extension-collaboration-caret'
import { Placeholder } from '@tiptap/extensions'
import { HocuspocusProvider, HocuspocusProviderWebsocket, WebSocketStatus } from '@hocuspocus/provider'
import { BrowserConnection, type Connection, type SaveState, type ServerBase, rejoin, serverBase } from './session'
import { type PeerState, type Presence, displayColor, displayName } from './presence'
import type { MountedView } from './editor'

/** The root type of the rich text in the room's document. */
export const RICHTEXT_FIELD = 'richtext'

/**
 * The Hocuspocus endpoint: the server's root, i.e. the directory the app was loaded from (the
 * path prefix, if any), where the y-websocket URLs add the document name.
 */
export function hocuspocusUrl (base: ServerBase = serverBase()): string {
  return base.ws
}

/** One HocuspocusProvider on its own socket, and what the header shows about it. */
class HocuspocusConnection extends BrowserConnection {
  readonly doc = new Y.Doc()
  readonly socket: HocuspocusProviderWebsocket
  readonly provider: HocuspocusProvider
  readonly offlineDetail = 'Not connected: edits are kept in this page (not stored on this device) and sync when the connection is back'
  /** The socket's last reported status; `connect()` has started when the socket is made. */
  private phase: WebSocketStatus = WebSocketStatus.Connecting
  /** Set when the server refuses this document (no access). */
  private refusal: string | null = null

  constructor (url: string, room: string) {
    super()
    // A socket of our own (not `url` on the provider) so that it does not connect while the
    // browser knows it is offline, which would only log failed requests; hence `attach()`.
    this.socket = new HocuspocusProviderWebsocket({ url, autoConnect: this.online })
    this.socket.on('status', ({ status }: { status: WebSocketStatus }) => {
      this.phase = status
      this.notify()
    })
    // The document name travels in each message, as typed (no URL encoding).
    this.provider = new HocuspocusProvider({ websocketProvider: this.socket, name: room, document: this.doc })
    this.provider.on('synced', () => this.notify())
    this.provider.on('unsyncedChanges', () => this.notify())
    this.provider.on('authenticated', () => {
      this.refusal = null
      // Announce this user again at a higher clock: the others dropped this client's presence
      // when the previous connection ended (see rejoin). Sent once the document is open.
      rejoin(this.awareness)
      this.notify()
    })
    this.provider.on('authenticationFailed', ({ reason }: { reason: string }) => {
      this.refusal = reason
      this.notify()
    })
    this.provider.attach()
  }

  get awareness (): Awareness {
    return this.provider.awareness!
  }

  get connection (): Connection {
    if (!this.online) return 'Offline'
    switch (this.phase) {
      case WebSocketStatus.Connected: return this.provider.synced ? 'Live' : 'Connecting'
      case WebSocketStatus.Connecting: return 'Connecting'
      case WebSocketStatus.Disconnected: return 'Offline'
    }
  }

  get save (): SaveState {
    const unsynced = this.provider.unsyncedChanges
    if (unsynced === 0) return { saving: false, detail: 'All changes are saved on the server' }
    if (this.refusal !== null) {
      return { saving: true, detail: `The server refuses this document (${this.refusal}): the changes stay in this page` }
    }
    if (this.connection === 'Offline') {
      return { saving: true, detail: this.offlineDetail }
    }
    return { saving: true, detail: 'Waiting for the server to confirm that the latest changes are stored' }
  }

  destroy (): void {
    this.stopListening()
    // The provider tells the server that this client's presence is gone, and closes the
    // document; the socket is ours to close.
    this.provider.destroy()
    this.socket.destroy()
    this.doc.destroy()
  }

  protected wentOffline (): void {
    this.socket.disconnect()
  }

  protected cameOnline (): void {
    void this.socket.connect()
  }
}

interface ToolbarButton {
  /** The accessible name, and the visible text. */
  label: string
  title: string
  run: (editor: Editor) => void
  /** Toggles: whether the selection has it (aria-pressed). */
  active?: (editor: Editor) => boolean
  /** Commands that may not apply (undo with nothing to undo). */
  enabled?: (editor: Editor) => boolean
}

const TOOLBAR: ToolbarButton[] = [
  { label: 'Bold', title: 'Bold (Ctrl+B)', run: (e) => e.chain().focus().toggleBold().run(), active: (e) => e.isActive('bold') },
  { label: 'Italic', title: 'Italic (Ctrl+I)', run: (e) => e.chain().focus().toggleItalic().run(), active: (e) => e.isActive('italic') },
  { label: 'Strike', title: 'Strikethrough (Ctrl+Shift+S)', run: (e) => e.chain().focus().toggleStrike().run(), active: (e) => e.isActive('strike') },
  { label: 'Heading', title: 'Heading (Ctrl+Alt+2)', run: (e) => e.chain().focus().toggleHeading({ level: 2 }).run(), active: (e) => e.isActive('heading', { level: 2 }) },
  { label: 'Bullets', title: 'Bulleted list (Ctrl+Shift+8)', run: (e) => e.chain().focus().toggleBulletList().run(), active: (e) => e.isActive('bulletList') },
  { label: 'Numbers', title: 'Numbered list (Ctrl+Shift+7)', run: (e) => e.chain().focus().toggleOrderedList().run(), active: (e) => e.isActive('orderedList') },
  { label: 'Quote', title: 'Quote (Ctrl+Shift+B)', run: (e) => e.chain().focus().toggleBlockquote().run(), active: (e) => e.isActive('blockquote') },
  // Collaboration's undo: only this user's own changes.
  { label: 'Undo', title: 'Undo your last change (Ctrl+Z)', run: (e) => e.chain().focus().undo().run(), enabled: (e) => e.can().undo() },
  { label: 'Redo', title: 'Redo (Ctrl+Shift+Z)', run: (e) => e.chain().focus().redo().run(), enabled: (e) => e.can().redo() }
]

/** A remote caret: a bar in the user's colour with their name above it. */
function renderCaret (user: Record<string, unknown>): HTMLElement {
  const state: PeerState = { user }
  const caret = document.createElement('span')
  caret.className = 'collaboration-carets__caret'
  caret.dataset.testid = 'richtext-caret'
  caret.style.setProperty('--user-color', displayColor(state))
  // The header's list says who is here; a screen reader reading the text should not read
  // names in the middle of it.
  caret.setAttribute('aria-hidden', 'true')
  const label = document.createElement('span')
  label.className = 'collaboration-carets__label'
  label.textContent = displayName(state)
  caret.append(label)
  return caret
}

export function mountRichText (root: HTMLElement, room: string, presence: Presence): MountedView {
  const section = document.createElement('section')
  section.className = 'view view-richtext'
  section.setAttribute('aria-labelledby', 'view-title')
  section.innerHTML = `
    <div class="view-head">
      <h1 id="view-title">Rich text</h1>
      <p class="view-hint">Formatted text on this room's document, synced with Tiptap's Hocuspocus provider.</p>
    </div>
    <div class="richtext-frame">
      <div class="richtext-toolbar" role="group" aria-label="Formatting"></div>
      <div class="richtext-content" data-testid="richtext"></div>
    </div>`
  const toolbar = section.querySelector<HTMLElement>('.richtext-toolbar')!
  const container = section.querySelector<HTMLElement>('[data-testid="richtext"]')!
  root.replaceChildren(section)

  const connection = new HocuspocusConnection(hocuspocusUrl(), room)
  // Before the editor: the caret extension writes `user` into the state it finds there.
  const moveBack = presence.moveTo(connection.awareness)

  const editor = new Editor({
    element: container,
    extensions: [
      // Collaboration brings its own undo (of this user's changes only).
      StarterKit.configure({ undoRedo: false }),
      Collaboration.configure({ document: connection.doc, field: RICHTEXT_FIELD }),
      CollaborationCaret.configure({ provider: connection.provider, user: presence.user, render: renderCaret }),
      Placeholder.configure({ placeholder: 'Start writing: everyone in this room sees it as you type.' })
    ],
    editorProps: {
      attributes: {
        role: 'textbox',
        'aria-multiline': 'true',
        'aria-label': 'Shared rich text',
        spellcheck: 'true'
      }
    },
    onUpdate: ({ transaction }) => {
      // Remote changes arrive through Yjs; only this user's own are typing.
      if (!isChangeOrigin(transaction)) presence.typed()
    },
    onBlur: () => presence.stopTyping()
  })

  const buttons = TOOLBAR.map((spec) => {
    const button = document.createElement('button')
    button.type = 'button'
    button.className = `format-button format-${spec.label.toLowerCase()}`
    button.dataset.testid = `format-${spec.label.toLowerCase()}`
    button.textContent = spec.label
    button.title = spec.title
    // Keep the editor's selection: a click on a button must not move the focus first.
    button.addEventListener('mousedown', (event) => event.preventDefault())
    button.addEventListener('click', () => spec.run(editor))
    toolbar.append(button)
    return { spec, button }
  })
  const refreshToolbar = (): void => {
    for (const { spec, button } of buttons) {
      if (spec.active !== undefined) button.setAttribute('aria-pressed', String(spec.active(editor)))
      if (spec.enabled !== undefined) button.disabled = !spec.enabled(editor)
    }
  }
  editor.on('transaction', refreshToolbar)
  refreshToolbar()

  return {
    header: { status: connection, awareness: connection.awareness },
    destroy: () => {
      presence.stopTyping()
      // First: the provider's awareness is destroyed with it.
      moveBack()
      editor.off('transaction', refreshToolbar)
      editor.destroy()
      connection.destroy()
      section.remove()
    }
  }
}
