// The page: the URL says which room, view and transport (`?room=&view=&transport=&name=`), and
// the app follows it. A new room or transport means a new session; a new view only remounts
// the view, on the same document and connection.

import './style.css'
import { Session, TRANSPORTS, type TransportName } from './session'
import { Presence, type User, type ViewName, cleanName, loadUser, renamed, saveUser, showPeople } from './presence'
import { type MountedView, mountEditor } from './editor'
import { mountCanvas } from './canvas'
import { mountList } from './list'
import { randomRoom } from './random'

const VIEWS: readonly ViewName[] = ['editor', 'canvas', 'list']
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
  typing: byTestId<HTMLElement>('typing-indicator')
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
let user: User = loadUser(route.name)
let session: Session | null = null
let presence: Presence | null = null
let view: MountedView | null = null
let mountedView: ViewName | null = null
let unbind: Array<() => void> = []

function showStatus (s: Session): void {
  const connection = s.connection
  ui.connection.textContent = connection
  ui.connection.dataset.connection = connection
  ui.connection.title = {
    Live: 'Connected and in sync with the server',
    Connecting: 'Connecting to the server…',
    Offline: 'Not connected: edits are kept on this device and sync when the connection is back'
  }[connection]
  const save = s.save
  ui.save.textContent = save.saving ? 'Saving' : 'Saved'
  ui.save.dataset.saving = String(save.saving)
  ui.save.title = save.detail
}

function closeSession (): void {
  view?.destroy()
  view = null
  mountedView = null
  for (const stop of unbind) stop()
  unbind = []
  presence?.destroy()
  presence = null
  session?.destroy()
  session = null
}

/** Makes the page show `route`. */
function apply (): void {
  if (session === null || session.room !== route.room || session.transport !== route.transport) {
    closeSession()
    const s = new Session(route.room, route.transport)
    session = s
    presence = new Presence(s.awareness, user, route.view)
    unbind.push(s.subscribe(() => showStatus(s)), showPeople(s.awareness, ui.presence, ui.typing))
    showStatus(s)
  }
  if (mountedView !== route.view) {
    view?.destroy()
    const p = presence!
    view = route.view === 'editor'
      ? mountEditor(ui.view, session, p)
      : route.view === 'canvas' ? mountCanvas(ui.view, session, p) : mountList(ui.view, session)
    mountedView = route.view
    p.setView(route.view)
  }
  for (const [i, link] of ui.nav.entries()) {
    const target = VIEWS[i]!
    link.href = routeUrl({ ...route, view: target })
    if (target === route.view) link.setAttribute('aria-current', 'page')
    else link.removeAttribute('aria-current')
  }
  ui.transport.value = route.transport
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
