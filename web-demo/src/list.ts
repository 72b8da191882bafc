// The list view: a to-do list stored in `todos` (a Y.Array of Y.Maps: { id, text, done }), in
// the array's order. It works offline like everything else: edits stay in the local Y.Doc and
// IndexedDB, and merge when the connection is back.

import * as Y from 'yjs'
import type { Session } from './session'
import type { MountedView } from './editor'
import { randomId } from './random'

/** The origin of this view's transactions (local edits: they go to the server). */
const LOCAL = { source: 'list' }

interface ItemElements {
  root: HTMLLIElement
  toggle: HTMLInputElement
  text: HTMLInputElement
  up: HTMLButtonElement
  down: HTMLButtonElement
  remove: HTMLButtonElement
}

const ICONS = {
  up: '<svg viewBox="0 0 16 16" width="16" height="16" aria-hidden="true"><path d="M8 12.5V3.5M4 7.5l4-4 4 4" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round"/></svg>',
  down: '<svg viewBox="0 0 16 16" width="16" height="16" aria-hidden="true"><path d="M8 3.5v9M4 8.5l4 4 4-4" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round"/></svg>',
  remove: '<svg viewBox="0 0 16 16" width="14" height="14" aria-hidden="true"><path d="M4 4l8 8M12 4l-8 8" stroke="currentColor" stroke-width="2" stroke-linecap="round"/></svg>'
}

function itemLabel (text: string): string {
  return text.trim() === '' ? 'Untitled to-do' : text
}

export function mountList (root: HTMLElement, session: Session): MountedView {
  const doc = session.doc
  const todos = doc.getArray<unknown>('todos')
  const section = document.createElement('section')
  section.className = 'view view-list'
  section.setAttribute('aria-labelledby', 'view-title')
  section.innerHTML = `
    <div class="view-head">
      <h1 id="view-title">To-do list</h1>
      <p class="view-hint" data-testid="todo-count"></p>
    </div>
    <div class="list-card">
      <form class="todo-form">
        <label for="todo-input" class="visually-hidden">New to-do</label>
        <input id="todo-input" class="input" data-testid="todo-input" type="text" autocomplete="off" placeholder="What needs doing?" maxlength="500">
        <button type="submit" class="button button-primary" data-testid="todo-add">Add</button>
      </form>
      <ul class="todo-list" aria-label="To-dos"></ul>
      <p class="todo-empty">Nothing to do yet. Add the first item above; it works offline too.</p>
    </div>`
  const form = section.querySelector<HTMLFormElement>('form')!
  const input = section.querySelector<HTMLInputElement>('[data-testid="todo-input"]')!
  const list = section.querySelector<HTMLUListElement>('.todo-list')!
  const count = section.querySelector<HTMLElement>('[data-testid="todo-count"]')!
  const empty = section.querySelector<HTMLElement>('.todo-empty')!
  root.replaceChildren(section)

  const items = new Map<string, ItemElements>()
  /** The key of each item, in the array's order (see render). */
  let keys: string[] = []
  const indexOf = (key: string): number => keys.indexOf(key)

  const todoAt = (index: number): Y.Map<unknown> | null => {
    const item = index >= 0 && index < todos.length ? todos.get(index) : null
    return item instanceof Y.Map ? item : null
  }

  /** Moves an item by delete and insert of a copy, in one transaction (the id goes along). */
  const move = (key: string, by: -1 | 1): void => {
    const from = indexOf(key)
    const to = from + by
    const item = todoAt(from)
    if (item === null || to < 0 || to >= todos.length) return
    doc.transact(() => {
      const copy = new Y.Map<unknown>(Object.entries(item.toJSON()))
      todos.delete(from, 1)
      todos.insert(to, [copy])
    }, LOCAL)
  }

  const createItem = (key: string): ItemElements => {
    const li = document.createElement('li')
    li.className = 'todo-item'
    li.dataset.testid = 'todo-item'
    li.innerHTML = `
      <input type="checkbox" class="todo-toggle" data-testid="todo-toggle">
      <input type="text" class="todo-text" data-testid="todo-text" autocomplete="off" maxlength="500">
      <span class="todo-actions">
        <button type="button" class="icon-button" data-testid="todo-up">${ICONS.up}</button>
        <button type="button" class="icon-button" data-testid="todo-down">${ICONS.down}</button>
        <button type="button" class="icon-button icon-button-danger" data-testid="todo-delete">${ICONS.remove}</button>
      </span>`
    const get = (testid: string): HTMLElement => li.querySelector<HTMLElement>(`[data-testid="${testid}"]`)!
    const el: ItemElements = {
      root: li,
      toggle: get('todo-toggle') as HTMLInputElement,
      text: get('todo-text') as HTMLInputElement,
      up: get('todo-up') as HTMLButtonElement,
      down: get('todo-down') as HTMLButtonElement,
      remove: get('todo-delete') as HTMLButtonElement
    }
    el.toggle.addEventListener('change', () => {
      const item = todoAt(indexOf(key))
      if (item !== null) doc.transact(() => item.set('done', el.toggle.checked), LOCAL)
    })
    el.text.addEventListener('input', () => {
      const item = todoAt(indexOf(key))
      if (item !== null) doc.transact(() => item.set('text', el.text.value), LOCAL)
    })
    el.up.addEventListener('click', () => move(key, -1))
    el.down.addEventListener('click', () => move(key, 1))
    el.remove.addEventListener('click', () => {
      const index = indexOf(key)
      if (todoAt(index) === null) return
      // Keep the keyboard in the list: focus goes to the next item, or the previous one.
      const next = keys[index + 1] ?? keys[index - 1]
      doc.transact(() => todos.delete(index, 1), LOCAL)
      const target = next === undefined ? input : items.get(next)?.text
      target?.focus()
    })
    return el
  }

  const render = (): void => {
    // Moving a focused element in the DOM blurs it: remember the focus and give it back.
    const active = document.activeElement instanceof HTMLElement && list.contains(document.activeElement)
      ? document.activeElement
      : null
    const selection = active instanceof HTMLInputElement && active.type === 'text'
      ? [active.selectionStart, active.selectionEnd] as const
      : null

    // Keys are ids; a concurrent move of the same item by two users can leave two copies with
    // one id, which get distinct keys (id, id#2, ...) and both show.
    const seen = new Map<string, number>()
    const nextKeys: string[] = []
    const maps: Array<Y.Map<unknown> | null> = []
    todos.forEach((value, index) => {
      const map = value instanceof Y.Map ? value : null
      const raw = map?.get('id')
      const id = typeof raw === 'string' && raw !== '' ? raw : `item-${index}`
      const n = (seen.get(id) ?? 0) + 1
      seen.set(id, n)
      nextKeys.push(n === 1 ? id : `${id}#${n}`)
      maps.push(map)
    })
    keys = nextKeys

    let done = 0
    keys.forEach((key, index) => {
      const map = maps[index] ?? null
      let el = items.get(key)
      if (el === undefined) {
        el = createItem(key)
        items.set(key, el)
      }
      const text = typeof map?.get('text') === 'string' ? map.get('text') as string : ''
      const checked = map?.get('done') === true
      if (checked) done++
      el.root.dataset.id = key.replace(/#\d+$/, '')
      el.root.classList.toggle('done', checked)
      el.toggle.checked = checked
      if (el.text.value !== text) el.text.value = text
      const label = itemLabel(text)
      el.toggle.setAttribute('aria-label', label)
      el.text.setAttribute('aria-label', `Text of ${label}`)
      el.up.setAttribute('aria-label', `Move up: ${label}`)
      el.down.setAttribute('aria-label', `Move down: ${label}`)
      el.remove.setAttribute('aria-label', `Delete: ${label}`)
      el.up.disabled = index === 0
      el.down.disabled = index === keys.length - 1
      if (list.children[index] !== el.root) list.insertBefore(el.root, list.children[index] ?? null)
    })
    for (const [key, el] of items) {
      if (keys.includes(key)) continue
      el.root.remove()
      items.delete(key)
    }

    if (active !== null && active.isConnected && document.activeElement !== active) {
      // A move button that just became disabled hands the focus to its sibling.
      const li = active.closest('li')
      const target = active instanceof HTMLButtonElement && active.disabled
        ? li?.querySelector<HTMLButtonElement>('.icon-button:not(:disabled)') ?? active
        : active
      target.focus()
      if (selection !== null && target === active) (active as HTMLInputElement).setSelectionRange(selection[0], selection[1])
    }

    const total = keys.length
    count.textContent = total === 0 ? 'No to-dos yet' : `${done} of ${total} done`
    empty.hidden = total > 0
  }

  form.addEventListener('submit', (event) => {
    event.preventDefault()
    const text = input.value.trim()
    if (text === '') return
    doc.transact(() => {
      todos.push([new Y.Map<unknown>(Object.entries({ id: randomId(), text, done: false }))])
    }, LOCAL)
    input.value = ''
    input.focus()
  })

  todos.observeDeep(render)
  render()
  return {
    destroy: () => {
      todos.unobserveDeep(render)
      section.remove()
    }
  }
}
