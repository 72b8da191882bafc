// Who is here: the local user's identity (kept in localStorage), the local awareness state, and
// the header's presence list and typing indicator.
//
// The awareness state is shared with Concord's Rust client, so its field names are fixed:
// { user: { name, color, colorLight }, status: 'online' | 'away', typing, cursor (written by
//   y-codemirror.next on the Y.Text, or by Tiptap on the rich text's XmlFragment: each editor
//   ignores positions in other types), pointer: { x, y } | null (board coordinates), view }

import type { Awareness } from 'y-protocols/awareness'
import { randomName, randomUserColor } from './random'
import { rejoin } from './session'

export type ViewName = 'editor' | 'canvas' | 'list' | 'richtext'

export interface User {
  name: string
  color: string
  /** The selection highlight: the color at 20% opacity. */
  colorLight: string
}

export interface Pointer {
  x: number
  y: number
}

/** A peer's awareness state as read: anything may be missing (other apps, older clients). */
export interface PeerState {
  user?: Partial<User>
  status?: string
  typing?: boolean
  pointer?: Pointer | null
  view?: string
}

const STORAGE_KEY = 'concord-demo-user'
const MAX_NAME_LENGTH = 40
/** Typing stops counting this long after the last keystroke. */
const TYPING_TIMEOUT_MS = 2_000

function withColor (name: string, color: string): User {
  return { name, color, colorLight: `${color}33` }
}

export function cleanName (name: string): string {
  return name.replace(/\s+/g, ' ').trim().slice(0, MAX_NAME_LENGTH)
}

/**
 * The stored identity, or a new random one; `nameFromUrl` (the `name` parameter) replaces the
 * name. Storage may be unavailable (private windows): the identity then lasts for the page.
 */
export function loadUser (nameFromUrl: string | null): User {
  let stored: { name?: unknown, color?: unknown } = {}
  try {
    stored = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? '{}') as typeof stored
  } catch {
    // Unreadable: start afresh.
  }
  const fromUrl = cleanName(nameFromUrl ?? '')
  const name = fromUrl !== '' ? fromUrl : typeof stored.name === 'string' && stored.name !== '' ? stored.name : randomName()
  const color = typeof stored.color === 'string' && /^#[0-9a-f]{6}$/i.test(stored.color) ? stored.color : randomUserColor()
  const user = withColor(name, color)
  saveUser(user)
  return user
}

export function saveUser (user: User): void {
  try {
    localStorage.setItem(STORAGE_KEY, JSON.stringify({ name: user.name, color: user.color }))
  } catch {
    // Not stored: see loadUser.
  }
}

export function renamed (user: User, name: string): User {
  return withColor(name, user.color)
}

function visibility (): 'online' | 'away' {
  return document.visibilityState === 'hidden' ? 'away' : 'online'
}

/**
 * The local awareness state of one session. It lives in the session's awareness, or in the one
 * of a view with a connection of its own while that view is open (see moveTo).
 */
export class Presence {
  private typingTimer: ReturnType<typeof setTimeout> | null = null
  private awareness: Awareness
  private current: User

  constructor (awareness: Awareness, user: User, view: ViewName) {
    this.awareness = awareness
    this.current = user
    awareness.setLocalState({ user, status: visibility(), typing: false, cursor: null, pointer: null, view })
    document.addEventListener('visibilitychange', this.onVisibility)
  }

  get user (): User {
    return this.current
  }

  setUser (user: User): void {
    this.current = user
    this.awareness.setLocalStateField('user', user)
  }

  /**
   * Moves this user's state to `other`, the awareness of a view's own connection to the same
   * room (rich text, over Hocuspocus), and withdraws it from the one it was in: a room's clients
   * see the awareness of both protocols, so the user would otherwise be listed twice. Returns
   * the move back, to call before `other` is destroyed.
   */
  moveTo (other: Awareness): () => void {
    const home = this.awareness
    const state = home.getLocalState()
    this.awareness = other
    // A caret position belongs to one editor's type: none in the new place yet.
    other.setLocalState(state === null ? null : { ...state, cursor: null })
    home.setLocalState(null)
    return () => {
      if (this.awareness !== other) return
      const now = other.getLocalState()
      this.awareness = home
      other.setLocalState(null)
      if (now === null) return
      home.setLocalState({ ...now, cursor: null })
      // Above the clock of the removal the others saw (see rejoin).
      rejoin(home)
    }
  }

  setView (view: ViewName): void {
    this.awareness.setLocalStateField('view', view)
  }

  /** Board coordinates while over the canvas, null otherwise. */
  setPointer (pointer: Pointer | null): void {
    this.awareness.setLocalStateField('pointer', pointer)
  }

  /** A keystroke in the editor: typing until TYPING_TIMEOUT_MS after the last one. */
  typed (): void {
    if (this.awareness.getLocalState()?.typing !== true) this.awareness.setLocalStateField('typing', true)
    if (this.typingTimer !== null) clearTimeout(this.typingTimer)
    this.typingTimer = setTimeout(() => this.stopTyping(), TYPING_TIMEOUT_MS)
  }

  stopTyping (): void {
    if (this.typingTimer !== null) clearTimeout(this.typingTimer)
    this.typingTimer = null
    if (this.awareness.getLocalState()?.typing === true) this.awareness.setLocalStateField('typing', false)
  }

  destroy (): void {
    if (this.typingTimer !== null) clearTimeout(this.typingTimer)
    document.removeEventListener('visibilitychange', this.onVisibility)
  }

  private readonly onVisibility = (): void => {
    this.awareness.setLocalStateField('status', visibility())
  }
}

export function displayName (state: PeerState): string {
  const name = state.user?.name
  return typeof name === 'string' && name.trim() !== '' ? name : 'Anonymous'
}

export function displayColor (state: PeerState): string {
  const color = state.user?.color
  // Only plain colors reach style attributes.
  return typeof color === 'string' && /^#[0-9a-f]{3,8}$/i.test(color) ? color : '#475569'
}

/** `Alice is typing…`, `Alice and Bob are typing…`, `Alice, Bob and 2 others are typing…`. */
export function typingText (names: string[]): string {
  const [a, b, c] = names
  if (a === undefined) return ''
  if (b === undefined) return `${a} is typing…`
  if (c === undefined) return `${a} and ${b} are typing…`
  if (names.length === 3) return `${a}, ${b} and ${c} are typing…`
  return `${a}, ${b} and ${names.length - 2} others are typing…`
}

const VIEW_LABELS: Record<string, string> = {
  editor: 'in the editor',
  canvas: 'on the canvas',
  list: 'in the list',
  richtext: 'in the rich text'
}

/** Keeps the presence list and the typing indicator in step with `awareness`; returns the stop. */
export function showPeople (awareness: Awareness, list: HTMLElement, typing: HTMLElement): () => void {
  // Cursors and pointers change the awareness many times a second; the list only needs
  // redrawing when what it shows changes.
  let shown = ''
  const render = (): void => {
    const self = awareness.clientID
    const states = Array.from(awareness.getStates() as Map<number, PeerState>)
      .sort(([idA, a], [idB, b]) => {
        if (idA === self) return -1
        if (idB === self) return 1
        return displayName(a).localeCompare(displayName(b)) || idA - idB
      })
    const key = JSON.stringify(states.map(([id, s]) => [id, displayName(s), displayColor(s), s.status, s.view, s.typing]))
    if (key === shown) return
    shown = key
    list.replaceChildren(...states.map(([id, state]) => presenceItem(state, id === self)))
    const typists = states
      .filter(([id, state]) => id !== self && state.typing === true)
      .map(([, state]) => displayName(state))
    typing.textContent = typingText(typists)
  }
  awareness.on('change', render)
  render()
  return () => awareness.off('change', render)
}

function presenceItem (state: PeerState, self: boolean): HTMLLIElement {
  const away = state.status === 'away'
  const item = document.createElement('li')
  item.className = 'presence-item'
  item.dataset.testid = 'presence-item'
  item.dataset.state = away ? 'away' : 'online'
  const dot = document.createElement('span')
  dot.className = 'presence-dot'
  dot.style.setProperty('--user-color', displayColor(state))
  dot.setAttribute('aria-hidden', 'true')
  const name = document.createElement('span')
  name.className = 'presence-name'
  name.textContent = displayName(state)
  item.append(dot, name)
  if (self) {
    const you = document.createElement('span')
    you.className = 'presence-you'
    you.textContent = '(you)'
    item.append(' ', you)
  }
  const where = VIEW_LABELS[state.view ?? '']
  const details = [away ? 'away' : 'online', where].filter((d) => d !== undefined).join(', ')
  item.title = `${displayName(state)}: ${details}`
  if (away) {
    const note = document.createElement('span')
    note.className = 'visually-hidden'
    note.textContent = ', away'
    item.append(note)
  }
  return item
}
