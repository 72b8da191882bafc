// The canvas view: sticky notes on a fixed-size board, stored in `notes` (a Y.Map of Y.Maps:
// id -> { x, y, text, color }, coordinates in board pixels), and everyone's mouse pointers from
// the awareness.

import * as Y from 'yjs'
import type { Session } from './session'
import { type PeerState, type Pointer, type Presence, displayColor, displayName } from './presence'
import { NOTE_COLORS, randomId, randomNoteColor } from './random'
import type { MountedView } from './editor'

export const BOARD_WIDTH = 1600
export const BOARD_HEIGHT = 1000
const NOTE_WIDTH = 200
const NOTE_HEIGHT = 168
/** Position writes during a drag, and pointer broadcasts, at most this often. */
const THROTTLE_MS = 50
const KEY_STEP = 10

/** The origin of this view's transactions (local edits: they go to the server). */
const LOCAL = { source: 'canvas' }

interface NoteElements {
  root: HTMLElement
  text: HTMLTextAreaElement
  color: HTMLSelectElement
}

function num (value: unknown, fallback: number): number {
  return typeof value === 'number' && Number.isFinite(value) ? value : fallback
}

function clamp (value: number, min: number, max: number): number {
  return Math.min(max, Math.max(min, value))
}

function clampPosition (x: number, y: number): Pointer {
  return {
    x: Math.round(clamp(x, 0, BOARD_WIDTH - NOTE_WIDTH)),
    y: Math.round(clamp(y, 0, BOARD_HEIGHT - NOTE_HEIGHT))
  }
}

export function mountCanvas (root: HTMLElement, session: Session, presence: Presence): MountedView {
  const doc = session.doc
  const notes = doc.getMap<unknown>('notes')
  const section = document.createElement('section')
  section.className = 'view view-canvas'
  section.setAttribute('aria-labelledby', 'view-title')
  section.innerHTML = `
    <div class="view-head">
      <h1 id="view-title">Canvas</h1>
      <p class="view-hint">Drag a note by its handle, or focus the handle and use the arrow keys.</p>
      <button type="button" class="button button-primary" data-testid="add-note">Add note</button>
    </div>
    <div class="board-scroll">
      <div class="board" data-testid="canvas" role="region" aria-label="Board">
        <p class="board-empty">No notes yet: add one, or watch others add theirs.</p>
        <div class="pointer-layer" aria-hidden="true"></div>
      </div>
    </div>`
  const scroller = section.querySelector<HTMLElement>('.board-scroll')!
  const board = section.querySelector<HTMLElement>('[data-testid="canvas"]')!
  const empty = section.querySelector<HTMLElement>('.board-empty')!
  const pointerLayer = section.querySelector<HTMLElement>('.pointer-layer')!
  board.style.width = `${BOARD_WIDTH}px`
  board.style.height = `${BOARD_HEIGHT}px`
  root.replaceChildren(section)

  const elements = new Map<string, NoteElements>()
  /** The note this user is dragging: its position comes from the pointer, not from Yjs. */
  let dragging: string | null = null

  const noteMap = (id: string): Y.Map<unknown> | null => {
    const note = notes.get(id)
    return note instanceof Y.Map ? note : null
  }

  const writePosition = (id: string, pos: Pointer): void => {
    const note = noteMap(id)
    if (note === null) return
    doc.transact(() => {
      note.set('x', pos.x)
      note.set('y', pos.y)
    }, LOCAL)
  }

  const place = (el: HTMLElement, pos: Pointer): void => {
    el.style.left = `${pos.x}px`
    el.style.top = `${pos.y}px`
  }

  const startDragging = (id: string, el: HTMLElement, handle: HTMLElement): void => {
    let grab: Pointer = { x: 0, y: 0 }
    let target: Pointer | null = null
    let frame = 0
    let lastWrite = 0
    let trailing: ReturnType<typeof setTimeout> | null = null

    const toBoard = (event: PointerEvent): Pointer => {
      const rect = board.getBoundingClientRect()
      return { x: event.clientX - rect.left, y: event.clientY - rect.top }
    }
    const write = (): void => {
      if (trailing !== null) clearTimeout(trailing)
      trailing = null
      lastWrite = performance.now()
      if (target !== null) writePosition(id, target)
    }
    handle.addEventListener('pointerdown', (event) => {
      if (event.button !== 0) return
      event.preventDefault()
      handle.setPointerCapture(event.pointerId)
      const at = toBoard(event)
      grab = { x: at.x - el.offsetLeft, y: at.y - el.offsetTop }
      target = null
      dragging = id
      el.classList.add('dragging')
      handle.focus()
    })
    handle.addEventListener('pointermove', (event) => {
      if (dragging !== id || !handle.hasPointerCapture(event.pointerId)) return
      const at = toBoard(event)
      target = clampPosition(at.x - grab.x, at.y - grab.y)
      // The element follows every frame; the document, which everybody receives, less often.
      if (frame === 0) {
        frame = requestAnimationFrame(() => {
          frame = 0
          if (target !== null) place(el, target)
        })
      }
      const wait = THROTTLE_MS - (performance.now() - lastWrite)
      if (wait <= 0) write()
      else if (trailing === null) trailing = setTimeout(write, wait)
    })
    const end = (): void => {
      if (dragging !== id) return
      if (frame !== 0) cancelAnimationFrame(frame)
      frame = 0
      write()
      if (target !== null) place(el, target)
      dragging = null
      el.classList.remove('dragging')
    }
    handle.addEventListener('pointerup', end)
    handle.addEventListener('pointercancel', end)
    handle.addEventListener('lostpointercapture', end)
  }

  const createNote = (id: string): NoteElements => {
    const el = document.createElement('article')
    el.className = 'note'
    el.dataset.testid = 'note'
    el.dataset.id = id
    el.setAttribute('aria-label', 'Note')
    el.innerHTML = `
      <div class="note-bar">
        <button type="button" class="note-handle" data-testid="note-handle" aria-label="Move note (arrow keys)" title="Drag to move, or use the arrow keys">
          <svg viewBox="0 0 16 16" width="16" height="16" aria-hidden="true"><g fill="currentColor"><circle cx="5" cy="4" r="1.4"/><circle cx="11" cy="4" r="1.4"/><circle cx="5" cy="8" r="1.4"/><circle cx="11" cy="8" r="1.4"/><circle cx="5" cy="12" r="1.4"/><circle cx="11" cy="12" r="1.4"/></g></svg>
        </button>
        <select class="note-color" data-testid="note-color" aria-label="Note color"></select>
        <button type="button" class="note-delete" data-testid="note-delete" aria-label="Delete note" title="Delete note">
          <svg viewBox="0 0 16 16" width="14" height="14" aria-hidden="true"><path d="M4 4l8 8M12 4l-8 8" stroke="currentColor" stroke-width="2" stroke-linecap="round"/></svg>
        </button>
      </div>
      <textarea class="note-text" data-testid="note-text" aria-label="Note text" placeholder="Write something…"></textarea>`
    const text = el.querySelector<HTMLTextAreaElement>('textarea')!
    const color = el.querySelector<HTMLSelectElement>('select')!
    const handle = el.querySelector<HTMLButtonElement>('.note-handle')!
    for (const { name, value } of NOTE_COLORS) color.add(new Option(name, value))

    text.addEventListener('input', () => {
      const note = noteMap(id)
      if (note !== null) doc.transact(() => note.set('text', text.value), LOCAL)
    })
    color.addEventListener('change', () => {
      const note = noteMap(id)
      if (note !== null) doc.transact(() => note.set('color', color.value), LOCAL)
    })
    el.querySelector('.note-delete')!.addEventListener('click', () => {
      doc.transact(() => notes.delete(id), LOCAL)
    })
    handle.addEventListener('keydown', (event) => {
      const delta: Record<string, [number, number]> = {
        ArrowLeft: [-KEY_STEP, 0], ArrowRight: [KEY_STEP, 0], ArrowUp: [0, -KEY_STEP], ArrowDown: [0, KEY_STEP]
      }
      const d = delta[event.key]
      const note = noteMap(id)
      if (d === undefined || note === null) return
      event.preventDefault()
      writePosition(id, clampPosition(num(note.get('x'), 0) + d[0], num(note.get('y'), 0) + d[1]))
    })
    startDragging(id, el, handle)
    return { root: el, text, color }
  }

  const render = (): void => {
    const seen = new Set<string>()
    for (const [id, value] of notes) {
      if (!(value instanceof Y.Map)) continue
      seen.add(id)
      let note = elements.get(id)
      if (note === undefined) {
        note = createNote(id)
        elements.set(id, note)
        board.insertBefore(note.root, pointerLayer)
      }
      if (dragging !== id) place(note.root, clampPosition(num(value.get('x'), 0), num(value.get('y'), 0)))
      const color = typeof value.get('color') === 'string' ? value.get('color') as string : NOTE_COLORS[0].value
      note.root.style.setProperty('--note-color', color)
      note.color.value = color
      const text = typeof value.get('text') === 'string' ? value.get('text') as string : ''
      if (note.text.value !== text) {
        // A remote edit of the note being typed in: keep the caret where it was.
        const { selectionStart, selectionEnd } = note.text
        note.text.value = text
        if (document.activeElement === note.text) note.text.setSelectionRange(selectionStart, selectionEnd)
      }
    }
    for (const [id, note] of elements) {
      if (seen.has(id)) continue
      note.root.remove()
      elements.delete(id)
      if (dragging === id) dragging = null
    }
    empty.hidden = elements.size > 0
  }

  /** The first spot in the visible part of the board that no note covers (roughly). */
  const freeSpot = (): Pointer => {
    const left = scroller.scrollLeft
    const top = scroller.scrollTop
    const right = Math.min(BOARD_WIDTH, left + scroller.clientWidth) - NOTE_WIDTH - 16
    const bottom = Math.min(BOARD_HEIGHT, top + scroller.clientHeight) - NOTE_HEIGHT - 16
    const taken = Array.from(elements.values(), ({ root }) => ({ x: root.offsetLeft, y: root.offsetTop }))
    const free = (x: number, y: number): boolean => taken.every((n) =>
      Math.abs(n.x - x) >= NOTE_WIDTH + 12 || Math.abs(n.y - y) >= NOTE_HEIGHT + 12)
    for (let y = top + 24; y <= bottom; y += 40) {
      for (let x = left + 24; x <= right; x += 40) {
        if (free(x, y)) return clampPosition(x, y)
      }
    }
    // Full: near the middle of what is visible, a little off so that stacked notes show.
    return clampPosition(
      left + scroller.clientWidth / 2 - NOTE_WIDTH / 2 + (Math.random() - 0.5) * 80,
      top + scroller.clientHeight / 2 - NOTE_HEIGHT / 2 + (Math.random() - 0.5) * 80
    )
  }

  section.querySelector('[data-testid="add-note"]')!.addEventListener('click', () => {
    const id = randomId()
    const { x, y } = freeSpot()
    doc.transact(() => {
      notes.set(id, new Y.Map<unknown>(Object.entries({ x, y, text: '', color: randomNoteColor() })))
    }, LOCAL)
    elements.get(id)?.text.focus()
  })

  // Everyone's pointers: this user's, sent while over the board; the others', drawn.
  let pending: Pointer | null = null
  let sendScheduled = false
  let lastSent = 0
  const sendPointer = (): void => {
    sendScheduled = false
    if (pending === null) return
    lastSent = performance.now()
    presence.setPointer(pending)
  }
  const onBoardMove = (event: PointerEvent): void => {
    const rect = board.getBoundingClientRect()
    pending = { x: Math.round(event.clientX - rect.left), y: Math.round(event.clientY - rect.top) }
    if (sendScheduled) return
    sendScheduled = true
    // Coalesced into a frame, and no more often than THROTTLE_MS.
    const wait = Math.max(0, THROTTLE_MS - (performance.now() - lastSent))
    setTimeout(() => requestAnimationFrame(sendPointer), wait)
  }
  const onBoardLeave = (): void => {
    pending = null
    presence.setPointer(null)
  }
  board.addEventListener('pointermove', onBoardMove)
  board.addEventListener('pointerleave', onBoardLeave)

  const pointers = new Map<number, HTMLElement>()
  const renderPointers = (): void => {
    const seen = new Set<number>()
    session.awareness.getStates().forEach((raw, clientId) => {
      const state = raw as PeerState
      const p = state.pointer
      if (clientId === session.awareness.clientID || p == null || typeof p.x !== 'number' || typeof p.y !== 'number') return
      seen.add(clientId)
      let el = pointers.get(clientId)
      if (el === undefined) {
        el = document.createElement('div')
        el.className = 'remote-pointer'
        el.dataset.testid = 'remote-pointer'
        el.innerHTML = `<svg viewBox="0 0 20 20" width="20" height="20" aria-hidden="true"><path d="M3 2l13 7-6 1.5L7.5 17z" fill="var(--user-color)" stroke="#fff" stroke-width="1.5" stroke-linejoin="round"/></svg><span class="remote-pointer-name"></span>`
        pointers.set(clientId, el)
        pointerLayer.append(el)
      }
      el.style.left = `${clamp(p.x, 0, BOARD_WIDTH)}px`
      el.style.top = `${clamp(p.y, 0, BOARD_HEIGHT)}px`
      el.style.setProperty('--user-color', displayColor(state))
      el.querySelector('.remote-pointer-name')!.textContent = displayName(state)
    })
    for (const [clientId, el] of pointers) {
      if (seen.has(clientId)) continue
      el.remove()
      pointers.delete(clientId)
    }
  }

  notes.observeDeep(render)
  session.awareness.on('change', renderPointers)
  render()
  renderPointers()

  return {
    destroy: () => {
      notes.unobserveDeep(render)
      session.awareness.off('change', renderPointers)
      board.removeEventListener('pointermove', onBoardMove)
      board.removeEventListener('pointerleave', onBoardLeave)
      pending = null
      presence.setPointer(null)
      section.remove()
    }
  }
}
