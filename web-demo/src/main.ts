// The page: the URL says which room, view and transport (`?room=&view=&transport=&name=`), and
// the app follows it. A new room or transport means a new session; a new view only remounts
// the view, on the same document and connection (the rich text view adds a connection of its
// own, over Hocuspocus, which the header shows while it is open).

import './style.css'
import { Session, TRANSPORTS, type StatusSource, type TransportName } from './session'
import { Presence, type User, type ViewName, cleanName, loadUser, renamed, saveUser, showPeople } from './presence'
import { type MountedView, mountEditor } from './editor'
import { mountCanvas } from './canvas'
import { mountList } from './list'
import { randomRoom } from './random'
import { HistoryPanel } from './history'

const VIEWS: readonly ViewName[] = ['editor', 'canvas', 'list', 'richtext']
const MAX_ROOM_LENGTH = 200

interface Route {
  room: string
  view: ViewName
  transport: TransportName
  name: string | null
}

function byTestId<T extends HTMLElement> (id: string): T {
  const el = document.querySelector<T>(`[data-testid="${id}"]`)
  if (el === null) throw new Error(`index.html lacks [data-testid="${id}"]`)
  return el
}

const ui = {
  view: document.getElementById('view')!,
  nav: VIEWS.map((view) => byTestId<HTMLAnchorElement>(`nav-${view}`)),
  roomForm: document.getElementById('room-form') as HTMLFormElement,
  roomInput: byTestId<HTMLInputElement>('room-input'),
  roomNew: byTestId<HTMLButtonElement>('room-new'),
  transport: byTestId<HTMLSelectElement>('transport'),
  connection: byTestId<HTMLElement>('connection-status'),
  save: byTestId<HTMLElement>('save-status'),
  userName: byTestId<HTMLInputElement>('user-name'),
  presence: byTestId<HTMLElement>('presence-list'),
  typing: byTestId<HTMLElement>('typing-indicator'),
  historyToggle: byTestId<HTMLButtonElement>('history-toggle'),
  historyPanel: byTestId<HTMLElement>('history-panel')
}

/** Room names as typed: no control characters, no surrounding blanks. */
function cleanRoom (room: string): string {
  // eslint-disable-next-line no-control-regex
  return room.replace(/[\u0000-\u001f\u007f]/g, '').trim().slice(0, MAX_ROOM_LENGTH)
}

function readRoute (): Route {
  const params = new URLSearchParams(location.search)
  const view = params.get('view') as ViewName | null
  const transport = params.get('transport') as TransportName | null
  return {
    room: cleanRoom(params.get('room') ?? ''),
    view: view !== null && VIEWS.includes(view) ? view : 'editor',
    transport: transport !== null && TRANSPORTS.includes(transport) ? transport : 'ws',
    name: params.get('name')
  }
}

function routeUrl (route: Route): string {
  const params = new URLSearchParams({ room: route.room, view: route.view, transport: route.transport })
  if (route.name !== null) params.set('name', route.name)
  return `?${params.toString()}`
}

let route = readRoute()
const historyPanel = new HistoryPanel(ui.historyToggle, ui.historyPanel)
let user: User = loadUser(route.name)
let session: Session | null = null
let presence: Presence | null = null
let view: MountedView | null = null
let mountedView: ViewName | null = null
/** Counts mounts: a view that finishes loading after another mount (or the session's end) is dropped. */
let mounts = 0
/** The header's subscriptions: to the session, or to the open view's own connection. */
let unbind: Array<() => void> = []

function showStatus (s: StatusSource): void {
  const connection = s.connection
  ui.connection.textContent = connection
  ui.connection.dataset.connection = connection
  ui.connection.title = {
    Live: 'Connected and in sync with the server',
    Connecting: 'Connecting to the server…',
    Offline: s.offlineDetail ?? 'Not connected: edits are kept on this device and sync when the connection is back'
  }[connection]
  const save = s.save
  ui.save.textContent = save.saving ? 'Saving' : 'Saved'
  ui.save.dataset.saving = String(save.saving)
  ui.save.title = save.detail
}

function unbindHeader (): void {
  for (const stop of unbind) stop()
  unbind = []
}

function closeSession (): void {
  unbindHeader()
  mounts++
  view?.destroy()
  view = null
  mountedView = null
  presence?.destroy()
  presence = null
  session?.destroy()
  session = null
}

/** The header follows the open view's own connection if it has one, else the session's. */
function bindHeader (s: Session, v: MountedView): void {
  unbindHeader()
  const status = v.header?.status ?? s
  const awareness = v.header?.awareness ?? s.awareness
  unbind = [status.subscribe(() => showStatus(status)), showPeople(awareness, ui.presence, ui.typing)]
  showStatus(status)
  // The rich text view always syncs over Hocuspocus (a WebSocket): the choice is the others'.
  ui.transport.disabled = v.header !== undefined
  ui.transport.title = v.header !== undefined ? 'The rich text view always uses a WebSocket (the Hocuspocus protocol)' : ''
}

/** A view's place while its code loads. */
function mountLoading (root: HTMLElement, title: string): MountedView & { failed: (err: unknown) => void } {
  const section = document.createElement('section')
  section.className = 'view'
  section.setAttribute('aria-labelledby', 'view-title')
  const heading = document.createElement('h1')
  heading.id = 'view-title'
  heading.textContent = title
  const note = document.createElement('p')
  note.className = 'view-hint'
  note.setAttribute('role', 'status')
  note.textContent = 'Loading…'
  const head = document.createElement('div')
  head.className = 'view-head'
  head.append(heading, note)
  section.append(head)
  root.replaceChildren(section)
  return {
    destroy: () => section.remove(),
    failed: (err) => {
      note.textContent = `This view could not be loaded (${err instanceof Error ? err.message : String(err)}): reload the page to try again.`
    }
  }
}

/** Makes the page show `route`. */
function apply (): void {
  if (session === null || session.room !== route.room || session.transport !== route.transport) {
    closeSession()
    const s = new Session(route.room, route.transport)
    session = s
    presence = new Presence(s.awareness, user, route.view)
  }
  if (mountedView !== route.view) {
    unbindHeader()
    view?.destroy()
    const s = session
    const p = presence!
    const mount = ++mounts
    switch (route.view) {
      case 'editor': view = mountEditor(ui.view, s, p); break
      case 'canvas': view = mountCanvas(ui.view, s, p); break
      case 'list': view = mountList(ui.view, s); break
      case 'richtext': {
        // Tiptap, ProseMirror and the Hocuspocus provider are as much code as the rest of the
        // app: loaded when the view is first opened.
        const loading = mountLoading(ui.view, 'Rich text')
        view = loading
        import('./richtext').then(({ mountRichText }) => {
          if (mount !== mounts) return
          loading.destroy()
          view = mountRichText(ui.view, s.room, p)
          bindHeader(s, view)
        }, (err: unknown) => {
          if (mount === mounts) loading.failed(err)
        })
        break
      }
    }
    mountedView = route.view
    p.setView(route.view)
    bindHeader(s, view)
  }
  for (const [i, link] of ui.nav.entries()) {
    const target = VIEWS[i]!
    link.href = routeUrl({ ...route, view: target })
    if (target === route.view) link.setAttribute('aria-current', 'page')
    else link.removeAttribute('aria-current')
  }
  ui.transport.value = route.transport
  historyPanel.show(route.room, route.view)
  if (document.activeElement !== ui.roomInput) ui.roomInput.value = route.room
  document.title = `${route.room} · Concord demo`
}

/** Goes to `next`: a new history entry (or the current one replaced), then the page follows. */
function navigate (next: Route, replace = false): void {
  route = next
  const url = routeUrl(route)
  if (replace) history.replaceState(null, '', url)
  else history.pushState(null, '', url)
  apply()
}

for (const link of ui.nav) {
  link.addEventListener('click', (event) => {
    // Modified clicks keep their meaning (a new tab, a new window).
    if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return
    event.preventDefault()
    const view = link.dataset.view as ViewName
    if (view !== route.view) navigate({ ...route, view })
    // The content follows the link, for keyboard and screen reader users.
    ui.view.focus({ preventScroll: true })
  })
}

ui.roomForm.addEventListener('submit', (event) => {
  event.preventDefault()
  const room = cleanRoom(ui.roomInput.value)
  if (room === '') return
  ui.roomInput.blur()
  if (room !== route.room) navigate({ ...route, room })
  else ui.roomInput.value = room
})

ui.roomNew.addEventListener('click', () => {
  navigate({ ...route, room: randomRoom() })
})

ui.transport.addEventListener('change', () => {
  const transport = ui.transport.value as TransportName
  if (TRANSPORTS.includes(transport) && transport !== route.transport) navigate({ ...route, transport })
})

ui.userName.value = user.name
ui.userName.addEventListener('input', () => {
  const name = cleanName(ui.userName.value)
  if (name === '' || name === user.name) return
  user = renamed(user, name)
  saveUser(user)
  presence?.setUser(user)
  // A `name` in the address would bring the old name back on reload.
  if (route.name !== null) navigate({ ...route, name }, true)
})
ui.userName.addEventListener('change', () => {
  // Left empty: show the name still in use.
  if (cleanName(ui.userName.value) === '') ui.userName.value = user.name
})

window.addEventListener('popstate', () => {
  const next = readRoute()
  if (next.room === '') navigate({ ...next, room: randomRoom() }, true)
  else navigate(next, true)
})

// Leaving: the providers tell the others at once that this user is gone. A page restored from
// the back-forward cache connects again.
window.addEventListener('pagehide', closeSession)
window.addEventListener('pageshow', (event) => {
  if (event.persisted) apply()
})

if (route.room === '') {
  // A fresh room, in the address so it can be shared.
  navigate({ ...route, room: randomRoom() }, true)
} else {
  // Normalise the address (defaults written out), without a new history entry.
  navigate(route, true)
}
