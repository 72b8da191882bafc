// Harness for the browser end-to-end tests of the web demo: starts the Concord server serving the
// built demo (web-demo/dist), drives headless Chromium through playwright-core, and polls for results.
//
// Run (from the repository root):
//   cargo build --workspace --bins
//   (cd web-demo && npm ci && npm run build)
//   cd tests/browser && npm ci && npm test
//
// Environment variables:
//   CONCORD_SERVER_BIN  path to the server binary (default: <repo>/target/debug/concord-server,
//                       or $CARGO_TARGET_DIR/debug/concord-server when that is set).
//   CHROMIUM_BIN        the Chromium executable (default: /usr/bin/chromium, Debian's `chromium`).
//   WEB_DEMO_DIST       the built demo (default: <repo>/web-demo/dist).
//
// Waiting is always done by polling the page against a generous deadline (waitFor), never by
// sleeping a fixed time and hoping the result is there: the machines that run this have 2 noisy
// cores. No test asserts on how fast anything happens.
//
// Every page's console errors and uncaught exceptions fail the test (see User). The only ones
// tolerated are the browser's own reports of failed network requests, and only while the test has
// deliberately cut that page off (context offline, or server stopped).

import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import { pollUntil, terminate } from '../wait.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))
export const repoRoot = path.resolve(here, '..', '..')
const targetDir = process.env.CARGO_TARGET_DIR
  ? path.resolve(repoRoot, process.env.CARGO_TARGET_DIR)
  : path.join(repoRoot, 'target')

export const serverBin = process.env.CONCORD_SERVER_BIN || path.join(targetDir, 'debug', 'concord-server')
export const chromiumBin = process.env.CHROMIUM_BIN || '/usr/bin/chromium'
export const distDir = process.env.WEB_DEMO_DIST
  ? path.resolve(process.env.WEB_DEMO_DIST)
  : path.join(repoRoot, 'web-demo', 'dist')
export const screenshotDir = path.join(here, 'screenshots')

/** Default deadline for anything that waits on the page or the network. */
export const DEFAULT_TIMEOUT_MS = 20_000
/** Longer deadline for waits that include a reconnect with backoff (server restart, offline). */
export const RECONNECT_TIMEOUT_MS = 30_000
/** Per-test upper bound, so a hung test fails instead of hanging the suite. */
export const TEST_TIMEOUT_MS = 150_000
const STARTUP_TIMEOUT_MS = 30_000
const SHUTDOWN_TIMEOUT_MS = 20_000

/** Polls `predicate` until it returns a truthy value or the deadline passes (see ../wait.mjs). */
export const waitFor = (predicate, { timeout = DEFAULT_TIMEOUT_MS, interval = 50, message = 'condition' } = {}) =>
  pollUntil(predicate, { timeout, interval, message })

/** A room name no other test uses. */
export function uniqueRoom (label) {
  return `${label}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`
}

export function requireDist () {
  if (!existsSync(path.join(distDir, 'index.html'))) {
    throw new Error(`the web demo is not built: ${path.join(distDir, 'index.html')} is missing. ` +
      'Run `cd web-demo && npm ci && npm run build` first (or set WEB_DEMO_DIST).')
  }
}

// ---------------------------------------------------------------------------------------------
// Server

export class Server {
  constructor ({ child, dataDir, ownsDataDir }) {
    this.child = child
    this.dataDir = dataDir
    this.ownsDataDir = ownsDataDir
    this.port = null
    this.stdout = ''
    this.stderrChunks = []
    this.exit = null
    this.exited = new Promise((resolve) => child.on('exit', (code, signal) => {
      this.exit = { code, signal }
      resolve(this.exit)
    }))
  }

  get origin () {
    return `http://127.0.0.1:${this.port}`
  }

  get running () {
    return this.exit === null
  }

  stderrTail (max = 6000) {
    const s = Buffer.concat(this.stderrChunks).toString('utf8')
    return s.length > max ? '...' + s.slice(-max) : s
  }

  /** SIGTERM, then require a clean exit (status 0) within the deadline. */
  async stop () {
    if (this.exit) {
      throw new Error(`server had already exited: ${JSON.stringify(this.exit)}\n${this.stderrTail()}`)
    }
    const result = await terminate(this.child, this.exited, SHUTDOWN_TIMEOUT_MS)
    if (result.code !== 0) {
      throw new Error(`server exited with ${JSON.stringify(result)} after SIGTERM, expected status 0\n${this.stderrTail()}`)
    }
  }

  /** For `after` hooks: stop if still running (SIGKILL if SIGTERM does not do), never throw. */
  async dispose () {
    if (this.exit === null) {
      try { await this.stop() } catch { /* reported by the test that owns it, if any */ }
    }
    if (this.ownsDataDir) rmSync(this.dataDir, { recursive: true, force: true })
  }
}

/**
 * Starts the server on 127.0.0.1 serving the built demo at `/`, and waits for its
 * `listening on HOST:PORT` line. `port` 0 picks a free one; pass the port (and `dataDir`) of a
 * stopped server to restart it where its pages will reconnect.
 */
export async function startServer ({ port = 0, dataDir = null, extraArgs = [] } = {}) {
  requireDist()
  if (!existsSync(serverBin)) {
    throw new Error(`server binary not found at ${serverBin}: run \`cargo build --workspace --bins\` ` +
      'at the repository root, or set CONCORD_SERVER_BIN')
  }
  const ownsDataDir = dataDir === null
  const dir = dataDir ?? mkdtempSync(path.join(os.tmpdir(), 'concord-browser-'))
  const args = ['--host', '127.0.0.1', '--port', String(port), '--data-dir', dir, '--static-dir', distDir, ...extraArgs]
  const child = spawn(serverBin, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_BACKTRACE: '1' }
  })
  const server = new Server({ child, dataDir: dir, ownsDataDir })
  child.stderr.on('data', (chunk) => server.stderrChunks.push(chunk))
  server.port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(`no "listening on" line within ${STARTUP_TIMEOUT_MS} ms`), STARTUP_TIMEOUT_MS)
    const fail = (why) => {
      clearTimeout(timer)
      child.kill('SIGKILL')
      reject(new Error(`${why}\ncommand: ${serverBin} ${args.join(' ')}\nstdout: ${JSON.stringify(server.stdout)}\n` +
        `--- server stderr ---\n${server.stderrTail()}`))
    }
    const onError = (err) => fail(`cannot spawn ${serverBin}: ${err.message}`)
    const onExit = (code, signal) => fail(`server exited during startup (code ${code}, signal ${signal})`)
    child.on('error', onError)
    child.on('exit', onExit)
    child.stdout.on('data', (chunk) => {
      server.stdout += chunk.toString('utf8')
      const m = /^listening on (?:\S+):(\d+)\s*$/m.exec(server.stdout)
      if (m) {
        clearTimeout(timer)
        child.off('exit', onExit)
        child.off('error', onError)
        resolve(Number(m[1]))
      }
    })
  })
  return server
}

// ---------------------------------------------------------------------------------------------
// Browser

/**
 * One headless Chromium per test file; each user is a new browser context of it.
 *
 * Why `launch` + `newContext` and not `--user-data-dir` in `args`: playwright-core refuses a
 * `--user-data-dir` argument to `launch` (it wants `launchPersistentContext` for that), and it
 * already starts Chromium with a fresh temporary profile directory of its own, removed on close.
 * Every context made with `browser.newContext()` is an off-the-record profile inside that
 * browser: its own cookies, localStorage, IndexedDB and BroadcastChannel scope, empty when it
 * starts and discarded when it closes. So two contexts are two users on two machines as far as
 * the app can tell, and a new context is a user with no IndexedDB at all, which is what the
 * persistence test needs. (Two persistent contexts would need two browser processes, which
 * costs more on 2 cores and isolates nothing more.)
 *
 * `--headless` is what playwright's `headless: true` (the default) passes; the others keep
 * Chromium from talking to anything but the test server.
 */
export async function launchBrowser () {
  requireDist()
  if (!existsSync(chromiumBin)) {
    throw new Error(`Chromium not found at ${chromiumBin}: \`apt-get install -y chromium\` or set CHROMIUM_BIN`)
  }
  return chromium.launch({
    executablePath: chromiumBin,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      // A page served by serveAppFromDisk (route.fulfill) has no IP address, so Chromium's Local
      // Network Access checks count it as a public site and block its WebSocket to 127.0.0.1.
      // Pages served by the Concord server itself are same-origin and never hit this.
      '--disable-features=LocalNetworkAccessChecks'
    ]
  })
}

/**
 * Console messages that Chromium itself prints (not the app) when a request fails at the network
 * level: a resource, fetch or EventSource that cannot connect, and a WebSocket handshake that
 * cannot connect. These are expected while a context is offline or the server is stopped, and
 * only then (User.allowNetworkFailures). HTTP error statuses (4xx/5xx) are never tolerated.
 */
const NETWORK_FAILURE_PATTERNS = [
  /^Failed to load resource: net::ERR_[A-Z_]+$/,
  /^WebSocket connection to 'ws:\/\/127\.0\.0\.1:\d+\/[^']*' failed: /,
  /^(GET|POST) http:\/\/127\.0\.0\.1:\d+\/\S* net::ERR_[A-Z_]+$/
]

function isNetworkFailure (text) {
  return NETWORK_FAILURE_PATTERNS.some((re) => re.test(text))
}

/** One user: a browser context with one page, and the errors seen on it. */
export class User {
  constructor ({ name, context, page }) {
    this.name = name
    this.context = context
    this.page = page
    this.errors = []
    this.tolerated = []
    this.allowNetwork = false
    this.offline = false
    this.watchPage(page)
  }

  watchPage (page) {
    page.on('console', (msg) => {
      if (msg.type() !== 'error') return
      const text = msg.text()
      const loc = msg.location()
      const entry = `console.error: ${text}${loc && loc.url ? ` (at ${loc.url}:${loc.lineNumber})` : ''}`
      if (this.allowNetwork && isNetworkFailure(text)) this.tolerated.push(entry)
      else this.errors.push(entry)
    })
    page.on('pageerror', (err) => this.errors.push(`uncaught: ${err.stack || err.message || err}`))
    page.on('crash', () => this.errors.push('page crashed'))
  }

  /**
   * While `on`, Chromium's own reports of failed network requests are expected on this page
   * (see NETWORK_FAILURE_PATTERNS) and are not errors. Turn it off once the page is Live again.
   */
  allowNetworkFailures (on) {
    this.allowNetwork = on
  }

  async setOffline (offline) {
    if (offline) this.allowNetworkFailures(true)
    await this.context.setOffline(offline)
    this.offline = offline
  }

  async close () {
    try { await this.context.close() } catch { /* browser already gone */ }
  }
}

/**
 * Opens the demo for a new user (new context) at `query` (an object of URL parameters, e.g.
 * `{ room, view: 'editor', name: 'Alice' }`; `null` values are left out, so `{}` opens `/`).
 */
export async function openUser (browser, server, query, { name = query.name ?? 'anonymous' } = {}) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } })
  const page = await context.newPage()
  const user = new User({ name, context, page })
  await page.goto(demoUrl(server, query))
  await waitForApp(page)
  return user
}

export function demoUrl (server, query) {
  const params = new URLSearchParams()
  for (const [k, v] of Object.entries(query)) if (v !== null && v !== undefined) params.set(k, v)
  const qs = params.toString()
  return `${server.origin}/${qs ? '?' + qs : ''}`
}

/** Waits until the app has rendered its header. */
export async function waitForApp (page) {
  await page.getByTestId('connection-status').waitFor({ state: 'attached', timeout: DEFAULT_TIMEOUT_MS })
}

/** Fails the test when any user's page reported an error (see User). */
export function assertNoPageErrors (users) {
  const lines = []
  for (const u of users) for (const e of u.errors) lines.push(`[${u.name}] ${e}`)
  if (lines.length) throw new Error(`errors on the pages:\n${lines.join('\n')}`)
}

// ---------------------------------------------------------------------------------------------
// Reading the DOM (snapshots, no auto-waiting: used inside waitFor predicates)

const byId = (id) => `[data-testid="${id}"]`

export async function testIdText (page, id) {
  return page.evaluate((sel) => {
    const el = document.querySelector(sel)
    return el ? el.textContent.trim() : null
  }, byId(id))
}

export async function status (page) {
  return page.evaluate(() => {
    const t = (id) => {
      const el = document.querySelector(`[data-testid="${id}"]`)
      return el ? el.textContent.trim() : null
    }
    return { connection: t('connection-status'), save: t('save-status'), typing: t('typing-indicator') }
  })
}

/** The presence list: [{ text, state }] in DOM order. */
export async function presence (page) {
  return page.evaluate(() => [...document.querySelectorAll('[data-testid="presence-list"] [data-testid="presence-item"]')]
    .map((el) => ({ text: el.textContent.trim(), state: el.getAttribute('data-state') })))
}

/** True when the presence list has an item naming `name` with state `state`. */
export async function hasPresence (page, name, state = 'online') {
  const items = await presence(page)
  return items.some((i) => i.text.includes(name) && i.state === state)
}

export async function editorText (page) {
  return page.evaluate(() => {
    const el = document.querySelector('[data-testid="editor"] .cm-content')
    if (!el) return null
    // CodeMirror renders one .cm-line per line (textContent would drop the line breaks). Lines
    // also hold widgets that are not text: remote carets with their name labels
    // (y-codemirror.next) and the placeholder of an empty document.
    return [...el.querySelectorAll('.cm-line')].map((line) => {
      const copy = line.cloneNode(true)
      for (const w of copy.querySelectorAll('.cm-ySelectionCaret, .cm-ySelectionInfo, .cm-placeholder, .cm-widgetBuffer')) w.remove()
      return copy.textContent
    }).join('\n')
  })
}

/** The todo list as shown: [{ id, text, done }] in DOM order. */
export async function readTodos (page) {
  return page.evaluate(() => [...document.querySelectorAll('[data-testid="todo-item"]')].map((el) => {
    const text = el.querySelector('[data-testid="todo-text"]')
    const toggle = el.querySelector('[data-testid="todo-toggle"]')
    return {
      id: el.getAttribute('data-id'),
      text: text?.value ?? null,
      done: toggle?.checked ?? null
    }
  }))
}

/** The notes on the board: [{ id, left, top, text, color }]. */
export async function readNotes (page) {
  return page.evaluate(() => [...document.querySelectorAll('[data-testid="canvas"] [data-testid="note"]')].map((el) => {
    const text = el.querySelector('[data-testid="note-text"]')
    const color = el.querySelector('[data-testid="note-color"]')
    return {
      id: el.getAttribute('data-id'),
      left: parseFloat(el.style.left),
      top: parseFloat(el.style.top),
      text: text?.value ?? null,
      color: color?.value ?? null,
      background: getComputedStyle(el).backgroundColor
    }
  }))
}

// ---------------------------------------------------------------------------------------------
// Waiting on the app

export async function waitForStatus (page, want, { timeout = DEFAULT_TIMEOUT_MS, field = 'connection' } = {}) {
  const wanted = Array.isArray(want) ? want : [want]
  let last = null
  await waitFor(async () => {
    last = await status(page)
    return wanted.includes(last[field])
  }, { timeout, message: () => `${field} status ${JSON.stringify(wanted)}; last seen ${JSON.stringify(last)}` })
}

export const waitForLive = (page, opts) => waitForStatus(page, 'Live', opts)
export const waitForSaved = (page, opts) => waitForStatus(page, 'Saved', { ...opts, field: 'save' })

export async function waitForPresence (page, name, state = 'online', opts = {}) {
  await waitFor(() => hasPresence(page, name, state), {
    timeout: DEFAULT_TIMEOUT_MS,
    ...opts,
    message: async () => `presence of ${name} as ${state}; list is ${JSON.stringify(await presence(page))}`
  })
}

export async function waitForEditorText (page, predicate, what, opts = {}) {
  await waitFor(async () => predicate(await editorText(page)), {
    timeout: DEFAULT_TIMEOUT_MS,
    ...opts,
    message: async () => `editor text ${what}; it is ${JSON.stringify(await editorText(page))}`
  })
}

/** Clicks into the editor, moves to the end of the document and types `text`. */
export async function typeInEditor (page, text, { delay = 0 } = {}) {
  const content = page.locator('[data-testid="editor"] .cm-content')
  await content.waitFor({ timeout: DEFAULT_TIMEOUT_MS })
  await content.click()
  await page.keyboard.press('Control+End')
  await page.keyboard.type(text, { delay })
}

/** Switches view with the header navigation and waits for the view to show. */
export async function goToView (page, view) {
  await page.getByTestId(`nav-${view}`).click()
  await page.getByTestId(VIEW_MARKERS[view]).waitFor({ timeout: DEFAULT_TIMEOUT_MS })
}

/** An element each view always shows (the list view has no container test id of its own). */
const VIEW_MARKERS = { editor: 'editor', canvas: 'canvas', list: 'todo-input', richtext: 'richtext' }

/** The rich text editor's editable element (Tiptap/ProseMirror), once the view has loaded. */
export function richTextContent (page) {
  return page.locator('[data-testid="richtext"] .ProseMirror')
}

/**
 * The rich text as shown: its blocks (paragraphs, headings, list items...) as
 * [{ tag, text, bold: [texts in <strong>], italic: [texts in <em>] }], without the other users'
 * carets (Tiptap's collaboration caret widgets, which hold their names). Null before it loads.
 */
export async function readRichText (page) {
  return page.evaluate(() => {
    const root = document.querySelector('[data-testid="richtext"] .ProseMirror')
    if (!root) return null
    const copy = root.cloneNode(true)
    for (const w of copy.querySelectorAll('.collaboration-carets__caret, .ProseMirror-widget, .ProseMirror-trailingBreak')) w.remove()
    return [...copy.querySelectorAll('p, h1, h2, h3, h4, h5, h6, pre')].map((el) => ({
      tag: el.localName,
      text: el.textContent,
      bold: [...el.querySelectorAll('strong')].map((b) => b.textContent),
      italic: [...el.querySelectorAll('em')].map((i) => i.textContent)
    }))
  })
}

/** The names on the other users' carets in the rich text view. */
export async function richTextCaretNames (page) {
  return page.evaluate(() => [...document.querySelectorAll('[data-testid="richtext"] .collaboration-carets__caret .collaboration-carets__label')]
    .map((el) => el.textContent.trim()))
}

export async function waitForRichText (page, predicate, what, opts = {}) {
  return waitFor(async () => {
    const blocks = await readRichText(page)
    return blocks !== null && predicate(blocks) && blocks
  }, {
    timeout: DEFAULT_TIMEOUT_MS,
    ...opts,
    message: async () => `rich text ${what}; it is ${JSON.stringify(await readRichText(page))}`
  })
}

/** Clicks into the rich text editor, moves to the end of the document and types `text`. */
export async function typeInRichText (page, text) {
  const content = richTextContent(page)
  await content.waitFor({ timeout: DEFAULT_TIMEOUT_MS })
  await content.click()
  await page.keyboard.press('Control+End')
  await page.keyboard.type(text)
}

// ---------------------------------------------------------------------------------------------
// Screenshots

/**
 * Saves `screenshots/<name>.png`: the users' pages side by side (each labelled with the user's
 * name), rendered by a throwaway page of the same browser. Names are stable per test.
 */
export async function screenshot (browser, name, users) {
  mkdirSync(screenshotDir, { recursive: true })
  const shots = []
  for (const u of users) {
    shots.push({ name: u.name, png: (await u.page.screenshot()).toString('base64') })
  }
  const file = path.join(screenshotDir, `${name}.png`)
  if (shots.length === 1) {
    writeFileSync(file, Buffer.from(shots[0].png, 'base64'))
    return file
  }
  const context = await browser.newContext({ viewport: { width: 600 * shots.length + 16 * (shots.length + 1), height: 460 } })
  try {
    const page = await context.newPage()
    const cells = shots.map((s) => `<figure><figcaption>${s.name.replace(/[<&]/g, '')}</figcaption>` +
      `<img src="data:image/png;base64,${s.png}"></figure>`).join('')
    await page.setContent(`<!doctype html><style>
      body{margin:0;padding:16px;display:flex;gap:16px;background:#d9dce1;font:600 15px system-ui,sans-serif}
      figure{margin:0;flex:1}figcaption{margin:0 0 6px 2px;color:#333}
      img{width:100%;display:block;border-radius:6px;box-shadow:0 1px 4px rgba(0,0,0,.25)}
      </style>${cells}`)
    await page.waitForFunction(() => [...document.images].every((i) => i.complete && i.naturalWidth > 0))
    await page.screenshot({ path: file, fullPage: true })
  } finally {
    await context.close()
  }
  return file
}

// ---------------------------------------------------------------------------------------------
// Per-file setup

/**
 * Shared fixtures of one test file: one server and one browser for all of its tests, stopped in
 * `after` whatever happened. Each test makes its own users (contexts) via `ctx.user(...)`, which
 * are closed by `ctx.endTest()` in a `finally`.
 */
export class Suite {
  constructor () {
    this.server = null
    this.browser = null
    this.users = []
  }

  async setup () {
    requireDist()
    this.server = await startServer()
    this.browser = await launchBrowser()
  }

  async teardown () {
    await this.closeUsers()
    if (this.browser) await this.browser.close().catch(() => {})
    if (this.server) await this.server.dispose()
  }

  async user (query, opts) {
    const u = await openUser(this.browser, this.server, query, opts)
    this.users.push(u)
    return u
  }

  async closeUsers () {
    const users = this.users
    this.users = []
    await Promise.all(users.map((u) => u.close()))
  }

  /**
   * Runs one test body with its users, checks that no page reported errors, and always closes
   * the users. Adds the server's stderr tail to a failure.
   */
  async run (fn) {
    let failure = null
    try {
      await fn()
      assertNoPageErrors(this.users)
    } catch (err) {
      failure = err
      // Errors on the pages often explain the failure: add them to it.
      const pageErrors = this.users.flatMap((u) => u.errors.map((e) => `[${u.name}] ${e}`))
      if (pageErrors.length && err instanceof Error && !err.message.startsWith('errors on the pages')) {
        err.message += `\n--- errors on the pages ---\n${pageErrors.join('\n')}`
      }
      if (this.server && err instanceof Error) {
        err.message += `\n--- server stderr (tail) ---\n${this.server.stderrTail(3000)}`
      }
    }
    await this.closeUsers()
    if (failure) throw failure
  }
}

/** The names on the remote carets of the editor (y-codemirror.next's `.cm-ySelectionInfo`). */
export async function remoteCaretNames (page) {
  return page.evaluate(() => [...document.querySelectorAll('[data-testid="editor"] .cm-ySelectionCaret .cm-ySelectionInfo, [data-testid="editor"] .cm-ySelectionInfo')]
    .map((el) => el.textContent.trim()))
}

/**
 * Makes the page hidden or visible as far as its scripts can tell, and fires `visibilitychange`.
 *
 * Headless Chromium reports every page as visible whatever happens to it: opening another tab
 * and bringing it to the front, minimising the window (CDP Browser.setWindowBounds) and freezing
 * the page (CDP Page.setWebLifecycleState) all leave `document.visibilityState` at "visible" and
 * fire no event (checked with Chromium 156). So this overrides `document.visibilityState` and
 * `document.hidden` on the document and dispatches the event the browser would: the app's own
 * `visibilitychange` handling runs unchanged and reads the state the same way it would for a
 * real hidden tab. Going back to visible removes the overrides, so the real getters apply again.
 */
export async function setPageVisibility (page, state) {
  await page.evaluate((state) => {
    if (state === 'hidden') {
      Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' })
      Object.defineProperty(document, 'hidden', { configurable: true, get: () => true })
    } else {
      delete document.visibilityState
      delete document.hidden
    }
    document.dispatchEvent(new Event('visibilitychange', { bubbles: true }))
  }, state)
}

/** Adds a to-do by typing into `todo-input`, then Enter (or the `todo-add` button). */
export async function addTodo (page, text, { via = 'enter' } = {}) {
  const input = page.getByTestId('todo-input')
  await input.click()
  await page.keyboard.type(text)
  if (via === 'enter') await page.keyboard.press('Enter')
  else await page.getByTestId('todo-add').click()
  await waitFor(async () => (await readTodos(page)).some((t) => t.text === text),
    { message: async () => `to-do ${JSON.stringify(text)} in the list; it is ${JSON.stringify(await readTodos(page))}` })
}

/** The locator of the to-do item whose text is `text` (its `todo-text` value). */
export async function todoItem (page, text) {
  const todos = await readTodos(page)
  const t = todos.find((x) => x.text === text)
  if (!t) throw new Error(`no to-do ${JSON.stringify(text)} in ${JSON.stringify(todos)}`)
  return page.locator(`[data-testid="todo-item"][data-id="${t.id}"]`)
}

const CONTENT_TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json',
  '.map': 'application/json',
  '.webmanifest': 'application/manifest+json',
  '.wasm': 'application/wasm',
  '.woff2': 'font/woff2'
}

/**
 * Lets a context that is offline still load the demo's own files, read from web-demo/dist on
 * disk, as a browser's HTTP cache or a service worker would (the demo has neither), so a page can
 * be reloaded while offline. Only GETs of the server's origin that name a file of the build are
 * answered; everything else (the HTTP API, and WebSockets, which routes never see) still goes to
 * the network, and fails while the context is offline. Undo with `context.unrouteAll()`.
 */
export async function serveAppFromDisk (context, server) {
  await context.route(`${server.origin}/**`, async (route) => {
    const req = route.request()
    const url = new URL(req.url())
    let file = url.pathname === '/' ? path.join(distDir, 'index.html') : path.join(distDir, decodeURIComponent(url.pathname))
    if (req.method() !== 'GET' || !file.startsWith(distDir + path.sep) || !existsSync(file) || !statSync(file).isFile()) {
      return route.fallback()
    }
    const type = CONTENT_TYPES[path.extname(file)] || 'application/octet-stream'
    return route.fulfill({ status: 200, headers: { 'content-type': type }, body: readFileSync(file) })
  })
}
