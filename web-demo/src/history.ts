// The history panel: the room's versions from the server's version history API
// (`{api}/docs/{room}/versions`), newest first; a named version of the document as it is now;
// a read-only preview of any version; and restoring one, which the server applies to the live
// document as one update that every connected client receives (nothing here touches the local
// Y.Doc: the restore reaches this page like any other edit).
//
// A preview is the version's Yjs update applied to a fresh Y.Doc of its own, rendered as plain
// DOM (never as HTML from the document), then dropped.

import * as Y from 'yjs'
import { serverBase } from './session'
import type { ViewName } from './presence'

/** Where the server mounts its HTTP API (the server's default `--api-prefix`). */
const API_PREFIX = '/api'
/** The server takes labels of up to 256 bytes: 60 characters always fit. */
const MAX_LABEL_LENGTH = 60

interface Version {
  id: number
  created_at_ms: number
  /** Null for an automatic version. */
  label: string | null
  bytes: number
  position: string
}

interface Restored {
  restored: number
  changed: boolean
  saved_before: Version
}

/** An API answer that is not a success, with the server's `{"error": "..."}` if any. */
class ApiError extends Error {
  constructor (readonly status: number, message: string) {
    super(message)
  }
}

function versionsUrl (room: string, suffix = ''): string {
  return `${serverBase().http}${API_PREFIX}/docs/${encodeURIComponent(room)}/versions${suffix}`
}

async function request (url: string, init?: RequestInit): Promise<Response> {
  let response: Response
  try {
    response = await fetch(url, { cache: 'no-store', ...init })
  } catch {
    throw new ApiError(0, 'the server could not be reached')
  }
  if (response.ok) return response
  let message = response.statusText
  try {
    const body = await response.json() as { error?: unknown }
    if (typeof body.error === 'string' && body.error !== '') message = body.error
  } catch {
    // Not JSON: the status text says it.
  }
  throw new ApiError(response.status, message)
}

/** `Saving failed (403): read-only access`: what went wrong, for the panel's alert. */
function describeError (what: string, err: unknown): string {
  if (err instanceof ApiError) {
    if (err.status === 0) return `${what} failed: ${err.message}.`
    const hint = err.status === 403 ? ' You have read-only access to this room.' : ''
    return `${what} failed (${err.status}): ${err.message}.${hint}`
  }
  return `${what} failed: ${err instanceof Error ? err.message : String(err)}.`
}

function versionName (v: Version): string {
  return v.label ?? 'Automatic'
}

const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' })

export function formatBytes (bytes: number): string {
  if (bytes < 1024) return `${bytes} B`
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`
}

function el<K extends keyof HTMLElementTagNameMap> (tag: K, className?: string, text?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag)
  if (className !== undefined) e.className = className
  if (text !== undefined) e.textContent = text
  return e
}

// ---------------------------------------------------------------------------------------------
// Rendering a version (read-only)

/** Tiptap's node names (StarterKit) and the elements that show them. */
const BLOCKS: Record<string, keyof HTMLElementTagNameMap> = {
  paragraph: 'p',
  bulletList: 'ul',
  orderedList: 'ol',
  listItem: 'li',
  blockquote: 'blockquote',
  codeBlock: 'pre',
  horizontalRule: 'hr',
  hardBreak: 'br'
}

/** Tiptap's marks and the elements that show them, outermost first. */
const MARKS: Array<[string, keyof HTMLElementTagNameMap]> = [
  ['link', 'u'], ['bold', 'strong'], ['italic', 'em'], ['strike', 's'], ['underline', 'u'], ['code', 'code']
]

function renderXmlText (text: Y.XmlText, into: Node): void {
  for (const op of text.toDelta() as Array<{ insert?: unknown, attributes?: Record<string, unknown> }>) {
    if (typeof op.insert !== 'string') continue
    let node: Node = document.createTextNode(op.insert)
    const attrs = op.attributes ?? {}
    for (const [mark, tag] of [...MARKS].reverse()) {
      if (attrs[mark] === undefined || attrs[mark] === null) continue
      const wrap = document.createElement(tag)
      wrap.append(node)
      node = wrap
    }
    into.appendChild(node)
  }
}

function renderXml (node: Y.XmlElement | Y.XmlText | Y.XmlHook, into: Node): void {
  if (node instanceof Y.XmlText) {
    renderXmlText(node, into)
    return
  }
  if (!(node instanceof Y.XmlElement)) return
  let tag: keyof HTMLElementTagNameMap = BLOCKS[node.nodeName] ?? 'div'
  if (node.nodeName === 'heading') {
    const level = Math.min(6, Math.max(1, Number(node.getAttribute('level')) || 2))
    // One level under the preview's own heading at least: the page's outline stays sound.
    tag = `h${Math.min(6, level + 3)}` as keyof HTMLElementTagNameMap
  }
  const out = document.createElement(tag)
  const inner = node.nodeName === 'codeBlock' ? out.appendChild(document.createElement('code')) : out
  for (const child of node.toArray()) renderXml(child, inner)
  into.appendChild(out)
}

interface PreviewPart {
  view: ViewName
  title: string
  testId: string
  /** Null when that part of the document is empty. */
  render: (doc: Y.Doc) => HTMLElement | null
}

const PARTS: PreviewPart[] = [
  {
    view: 'editor',
    title: 'Document',
    testId: 'history-preview-text',
    render: (doc) => {
      const text = doc.getText('text').toString()
      return text === '' ? null : el('pre', 'history-preview-plain', text)
    }
  },
  {
    view: 'richtext',
    title: 'Rich text',
    testId: 'history-preview-richtext',
    render: (doc) => {
      const fragment = doc.getXmlFragment('richtext')
      if (fragment.length === 0) return null
      const out = el('div', 'history-preview-rich')
      for (const child of fragment.toArray()) renderXml(child, out)
      return out.textContent === '' && out.querySelector('hr') === null ? null : out
    }
  },
  {
    view: 'list',
    title: 'To-do list',
    testId: 'history-preview-todos',
    render: (doc) => {
      const todos = doc.getArray<unknown>('todos').toArray().filter((t): t is Y.Map<unknown> => t instanceof Y.Map)
      if (todos.length === 0) return null
      const list = el('ul', 'history-preview-todos')
      for (const todo of todos) {
        const done = todo.get('done') === true
        const item = el('li', done ? 'done' : undefined)
        item.append(el('span', 'visually-hidden', done ? 'Done: ' : 'To do: '))
        const mark = el('span', 'history-todo-mark', done ? '✓' : '○')
        mark.setAttribute('aria-hidden', 'true')
        item.append(mark, el('span', 'history-todo-text', String(todo.get('text') ?? '')))
        list.append(item)
      }
      return list
    }
  },
  {
    view: 'canvas',
    title: 'Canvas notes',
    testId: 'history-preview-notes',
    render: (doc) => {
      const notes = [...doc.getMap<unknown>('notes').values()].filter((n): n is Y.Map<unknown> => n instanceof Y.Map)
      if (notes.length === 0) return null
      const num = (v: unknown): number => typeof v === 'number' && Number.isFinite(v) ? v : 0
      // Reading order on the board: top to bottom, then left to right.
      notes.sort((a, b) => num(a.get('y')) - num(b.get('y')) || num(a.get('x')) - num(b.get('x')))
      const list = el('ul', 'history-preview-notes')
      for (const note of notes) {
        const item = el('li')
        const color = note.get('color')
        if (typeof color === 'string' && /^#[0-9a-f]{3,8}$/i.test(color)) item.style.setProperty('--note-color', color)
        const text = String(note.get('text') ?? '')
        item.textContent = text === '' ? '(empty note)' : text
        list.append(item)
      }
      return list
    }
  }
]

/** The version's content, the open view's part first; the Y.Doc is dropped once rendered. */
function renderVersion (update: Uint8Array, view: ViewName): HTMLElement {
  const doc = new Y.Doc()
  try {
    Y.applyUpdate(doc, update)
    const out = el('div', 'history-preview-parts')
    const parts = [...PARTS].sort((a, b) => Number(b.view === view) - Number(a.view === view))
    for (const part of parts) {
      const content = part.render(doc)
      if (content === null) continue
      const section = el('section', 'history-preview-part')
      section.dataset.testid = part.testId
      section.append(el('h4', 'history-preview-part-title', part.title), content)
      out.append(section)
    }
    if (out.childElementCount === 0) out.append(el('p', 'history-muted', 'This version is an empty document.'))
    return out
  } finally {
    doc.destroy()
  }
}

// ---------------------------------------------------------------------------------------------
// The panel

const TEMPLATE = `
  <div class="history-head">
    <h2 id="history-title" tabindex="-1">History</h2>
    <button type="button" class="button button-small" data-testid="history-refresh">Refresh</button>
    <button type="button" class="icon-button" data-testid="history-close" aria-label="Close history" title="Close (Escape)">
      <svg viewBox="0 0 16 16" width="14" height="14" aria-hidden="true"><path d="M4 4l8 8M12 4l-8 8" stroke="currentColor" stroke-width="2" stroke-linecap="round"/></svg>
    </button>
  </div>
  <p class="history-hint">Versions of this room's whole document, kept by the server. Automatic ones are taken while it is edited.</p>
  <form class="history-save" data-testid="history-save-form" novalidate>
    <label for="history-label">Name a version of the document as it is now</label>
    <div class="history-save-row">
      <input id="history-label" class="input" data-testid="history-label" type="text" autocomplete="off" maxlength="${MAX_LABEL_LENGTH}" placeholder="e.g. First draft">
      <button type="submit" class="button button-primary" data-testid="history-save">Save version</button>
    </div>
  </form>
  <p class="history-status" data-testid="history-status" role="status" aria-live="polite"></p>
  <p class="history-error" data-testid="history-error" role="alert"></p>
  <h3 class="history-subtitle" id="history-list-title">Versions <span class="history-muted">(newest first)</span></h3>
  <ul class="history-list" data-testid="history-list" aria-labelledby="history-list-title"></ul>
  <p class="history-muted history-empty" data-testid="history-empty" hidden></p>
  <section class="history-preview" data-testid="history-preview" aria-labelledby="history-preview-title" hidden>
    <h3 class="history-subtitle" id="history-preview-title" data-testid="history-preview-title"></h3>
    <div class="history-preview-body" data-testid="history-preview-body" role="region" aria-label="Read-only preview" tabindex="0"></div>
    <div class="history-actions">
      <button type="button" class="button" data-testid="history-restore">Restore this version</button>
      <button type="button" class="button button-danger" data-testid="history-restore-confirm" hidden>Confirm restore</button>
      <button type="button" class="button" data-testid="history-restore-cancel" hidden>Cancel</button>
    </div>
    <p class="history-muted history-restore-note" data-testid="history-restore-note" hidden>
      Restoring changes the document for everyone in this room. The current state is kept first as a version named
      “before restoring version <span data-testid="history-restore-id"></span>”, so this can be undone.
    </p>
  </section>`

export class HistoryPanel {
  private room: string | null = null
  private view: ViewName = 'editor'
  private versions: Version[] = []
  private selected: number | null = null
  /** The updates of versions already fetched (a version never changes). */
  private readonly updates = new Map<number, Uint8Array>()
  /** Bumped on each room change and list load: late answers of older ones are dropped. */
  private generation = 0
  private previewGeneration = 0
  private busy = false

  private readonly ui: {
    title: HTMLElement
    refresh: HTMLButtonElement
    close: HTMLButtonElement
    form: HTMLFormElement
    label: HTMLInputElement
    save: HTMLButtonElement
    status: HTMLElement
    error: HTMLElement
    list: HTMLUListElement
    empty: HTMLElement
    preview: HTMLElement
    previewTitle: HTMLElement
    previewBody: HTMLElement
    restore: HTMLButtonElement
    confirm: HTMLButtonElement
    cancel: HTMLButtonElement
    restoreNote: HTMLElement
    restoreId: HTMLElement
  }

  constructor (private readonly toggle: HTMLButtonElement, private readonly panel: HTMLElement) {
    panel.innerHTML = TEMPLATE
    const q = <T extends HTMLElement>(id: string): T => panel.querySelector<T>(`[data-testid="${id}"]`)!
    this.ui = {
      title: panel.querySelector<HTMLElement>('#history-title')!,
      refresh: q('history-refresh'),
      close: q('history-close'),
      form: q('history-save-form'),
      label: q('history-label'),
      save: q('history-save'),
      status: q('history-status'),
      error: q('history-error'),
      list: q('history-list'),
      empty: q('history-empty'),
      preview: q('history-preview'),
      previewTitle: q('history-preview-title'),
      previewBody: q('history-preview-body'),
      restore: q('history-restore'),
      confirm: q('history-restore-confirm'),
      cancel: q('history-restore-cancel'),
      restoreNote: q('history-restore-note'),
      restoreId: q('history-restore-id')
    }
    toggle.setAttribute('aria-expanded', 'false')
    toggle.setAttribute('aria-controls', panel.id)
    toggle.addEventListener('click', () => this.setOpen(!this.isOpen))
    this.ui.close.addEventListener('click', () => {
      this.setOpen(false)
      this.toggle.focus()
    })
    panel.addEventListener('keydown', (event) => {
      if (event.key !== 'Escape') return
      if (!this.ui.confirm.hidden) {
        this.cancelRestore()
        this.ui.restore.focus()
      } else {
        this.setOpen(false)
        this.toggle.focus()
      }
      event.preventDefault()
    })
    this.ui.refresh.addEventListener('click', () => { void this.load() })
    this.ui.form.addEventListener('submit', (event) => {
      event.preventDefault()
      void this.saveVersion()
    })
    this.ui.restore.addEventListener('click', () => this.askRestore())
    this.ui.cancel.addEventListener('click', () => {
      this.cancelRestore()
      this.ui.restore.focus()
    })
    this.ui.confirm.addEventListener('click', () => { void this.restore() })
  }

  get isOpen (): boolean {
    return !this.panel.hidden
  }

  /** The room (and open view) the panel is about; a new room starts afresh. */
  show (room: string, view: ViewName): void {
    const viewChanged = view !== this.view
    this.view = view
    if (room !== this.room) {
      this.room = room
      this.generation++
      this.versions = []
      this.updates.clear()
      this.selected = null
      this.setStatus('')
      this.setError('')
      this.renderList()
      this.renderPreview()
      if (this.isOpen) void this.load()
    } else if (viewChanged && this.selected !== null) {
      // The open view's part of the document comes first in the preview.
      this.renderPreview()
    }
  }

  setOpen (open: boolean): void {
    if (open === this.isOpen) return
    this.panel.hidden = !open
    this.toggle.setAttribute('aria-expanded', String(open))
    document.body.classList.toggle('history-open', open)
    if (open) {
      this.ui.title.focus({ preventScroll: true })
      void this.load()
    } else {
      this.cancelRestore()
    }
  }

  private setStatus (text: string): void {
    this.ui.status.textContent = text
  }

  private setError (text: string): void {
    this.ui.error.textContent = text
    this.ui.error.hidden = text === ''
  }

  private setBusy (busy: boolean): void {
    this.busy = busy
    for (const b of [this.ui.save, this.ui.refresh, this.ui.restore, this.ui.confirm]) b.disabled = busy
    this.panel.setAttribute('aria-busy', String(busy))
  }

  /** Loads the list of versions; `then` says what the action before it did. */
  private async load (): Promise<void> {
    const room = this.room
    if (room === null) return
    const generation = ++this.generation
    this.ui.list.setAttribute('aria-busy', 'true')
    try {
      const response = await request(versionsUrl(room))
      const body = await response.json() as { versions?: Version[] }
      if (generation !== this.generation) return
      this.versions = [...(body.versions ?? [])].reverse()
      if (this.selected !== null && !this.versions.some((v) => v.id === this.selected)) this.selected = null
      this.ui.empty.textContent = 'No versions yet: save one above, or keep editing for an automatic one.'
    } catch (err) {
      if (generation !== this.generation) return
      this.versions = []
      this.selected = null
      if (err instanceof ApiError && err.status === 404) {
        // Nothing of this room is stored yet: not an error.
        this.ui.empty.textContent = 'Nothing is stored for this room yet: edit the document first.'
      } else {
        this.ui.empty.textContent = 'The versions could not be loaded.'
        this.setError(describeError('Loading the versions', err))
      }
    } finally {
      if (generation === this.generation) this.ui.list.removeAttribute('aria-busy')
    }
    this.renderList()
    this.renderPreview()
  }

  private renderList (): void {
    const items = this.versions.map((v) => {
      const item = el('li', 'history-item')
      const button = el('button', 'history-version')
      button.type = 'button'
      button.dataset.testid = 'history-version'
      button.dataset.id = String(v.id)
      button.dataset.label = v.label ?? ''
      button.setAttribute('aria-pressed', String(v.id === this.selected))
      const name = el('span', v.label === null ? 'history-version-name history-automatic' : 'history-version-name', versionName(v))
      const when = new Date(v.created_at_ms)
      const time = el('time', undefined, timeFormat.format(when))
      time.dateTime = when.toISOString()
      const meta = el('span', 'history-version-meta')
      meta.append(time, ` · ${formatBytes(v.bytes)} · #${v.id}`)
      button.append(name, meta)
      button.addEventListener('click', () => this.select(v.id))
      item.append(button)
      return item
    })
    this.ui.list.replaceChildren(...items)
    this.ui.empty.hidden = items.length > 0 || this.ui.empty.textContent === ''
  }

  private select (id: number): void {
    this.selected = id
    this.setError('')
    this.setStatus('')
    this.cancelRestore()
    for (const b of this.ui.list.querySelectorAll<HTMLButtonElement>('[data-testid="history-version"]')) {
      b.setAttribute('aria-pressed', String(b.dataset.id === String(this.selected)))
    }
    this.renderPreview()
  }

  /** Shows the selected version (fetched once), or hides the preview. */
  private renderPreview (): void {
    const generation = ++this.previewGeneration
    const version = this.versions.find((v) => v.id === this.selected)
    if (version === undefined || this.room === null) {
      this.ui.preview.hidden = true
      this.ui.previewBody.replaceChildren()
      return
    }
    this.ui.preview.hidden = false
    this.ui.previewTitle.textContent = `Version #${version.id}: ${versionName(version)}`
    this.ui.previewBody.setAttribute('aria-label', `Read-only preview of version ${version.id}`)
    this.ui.restoreId.textContent = String(version.id)
    const show = (update: Uint8Array): void => {
      if (generation !== this.previewGeneration) return
      this.ui.previewBody.replaceChildren(renderVersion(update, this.view))
      this.ui.previewBody.dataset.version = String(version.id)
    }
    const cached = this.updates.get(version.id)
    if (cached !== undefined) {
      show(cached)
      return
    }
    this.ui.previewBody.dataset.version = ''
    this.ui.previewBody.replaceChildren(el('p', 'history-muted', 'Loading…'))
    const room = this.room
    void (async () => {
      try {
        const response = await request(versionsUrl(room, `/${version.id}?format=update`))
        const update = new Uint8Array(await response.arrayBuffer())
        if (room === this.room) this.updates.set(version.id, update)
        show(update)
      } catch (err) {
        if (generation !== this.previewGeneration) return
        this.ui.previewBody.replaceChildren(el('p', 'history-muted', 'No preview.'))
        this.setError(describeError(`Loading version ${version.id}`, err))
      }
    })()
  }

  private async saveVersion (): Promise<void> {
    const room = this.room
    if (room === null || this.busy) return
    const label = this.ui.label.value.replace(/\s+/g, ' ').trim()
    this.setError('')
    if (label === '') {
      this.setError('Give the version a name first.')
      this.ui.label.focus()
      return
    }
    this.setBusy(true)
    this.setStatus('Saving a version…')
    try {
      const response = await request(versionsUrl(room), {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ label })
      })
      const saved = await response.json() as Version
      if (room !== this.room) return
      this.ui.label.value = ''
      this.setStatus(`Saved version #${saved.id} “${label}”.`)
    } catch (err) {
      this.setStatus('')
      this.setError(describeError('Saving the version', err))
    } finally {
      this.setBusy(false)
    }
    if (room === this.room) await this.load()
  }

  /** First step of a restore: say what it does, and ask again. */
  private askRestore (): void {
    if (this.selected === null) return
    this.ui.restore.hidden = true
    this.ui.confirm.hidden = false
    this.ui.cancel.hidden = false
    this.ui.restoreNote.hidden = false
    this.ui.confirm.focus()
  }

  private cancelRestore (): void {
    this.ui.restore.hidden = false
    this.ui.confirm.hidden = true
    this.ui.cancel.hidden = true
    this.ui.restoreNote.hidden = true
  }

  private async restore (): Promise<void> {
    const room = this.room
    const id = this.selected
    if (room === null || id === null || this.busy) return
    this.setError('')
    this.setBusy(true)
    this.setStatus(`Restoring version #${id}…`)
    try {
      const response = await request(versionsUrl(room, `/${id}/restore`), { method: 'POST' })
      const result = await response.json() as Restored
      if (room !== this.room) return
      const before = result.saved_before
      const undo = `The state before is kept as version #${before.id} “${versionName(before)}”: restore that one to undo.`
      this.setStatus(result.changed
        ? `Restored version #${id} for everyone in the room. ${undo}`
        : `The document already matched version #${id}: nothing changed. ${undo}`)
    } catch (err) {
      this.setStatus('')
      this.setError(describeError(`Restoring version #${id}`, err))
    } finally {
      this.setBusy(false)
      this.cancelRestore()
    }
    if (room === this.room) {
      await this.load()
      this.ui.restore.focus()
    }
  }
}
