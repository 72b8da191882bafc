// Interop test: a Rust yrs peer (target/debug/yrs-peer) and y-websocket JS clients edit the same Y.Text through the server and converge.

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { serverTest, waitFor, waitSynced, yrsPeerBin } from './harness.mjs'

/**
 * Runs yrs-peer to completion and resolves with { code, stdout, stderr }. The peer enforces its
 * own deadline (--timeout-secs), so this never waits forever.
 */
function runPeer (ctx, args) {
  if (!existsSync(yrsPeerBin)) {
    throw new Error(`yrs-peer not found at ${yrsPeerBin}: run \`cargo build -p concord-tests --bin yrs-peer\` or set YRS_PEER_BIN`)
  }
  const child = ctx.track(spawn(yrsPeerBin, args, { stdio: ['ignore', 'pipe', 'pipe'] }))
  const out = []
  const err = []
  child.stdout.on('data', (c) => out.push(c))
  child.stderr.on('data', (c) => err.push(c))
  return new Promise((resolve, reject) => {
    child.on('error', reject)
    child.on('close', (code, signal) => resolve({
      code,
      signal,
      stdout: Buffer.concat(out).toString('utf8'),
      stderr: Buffer.concat(err).toString('utf8')
    }))
  })
}

function parsePeerOutput (result) {
  assert.equal(result.code, 0, `yrs-peer exited with ${result.code}/${result.signal}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`)
  const lines = result.stdout.trim().split('\n')
  assert.equal(lines.length, 1, `yrs-peer prints one JSON line, got: ${result.stdout}`)
  return JSON.parse(lines[0]).text
}

serverTest('a Rust yrs peer and a JS client converge on the same text', async (ctx) => {
  const js = ctx.client('rust-interop')
  await waitSynced(js.provider)
  const jsText = 'hello from js — ñ 漢 😀; '
  const rustText = 'hello from rust 🦀 — ü 字; '
  js.doc.getText('text').insert(0, jsText)
  // Make sure the server has the JS text before the peer connects, so that the peer's insert at
  // its end is deterministically after it (and not a concurrent insert ordered by client id).
  const observer = ctx.client('rust-interop')
  await waitFor(() => observer.doc.getText('text').toString() === jsText, { message: 'observer to see the JS text' })

  const peer = runPeer(ctx, [
    '--url', `${ctx.server.url}/${ctx.docName('rust-interop')}`,
    '--insert', rustText,
    '--expect-contains', jsText,
    '--expect-contains', rustText,
    '--timeout-secs', '20'
  ])
  await waitFor(() => js.doc.getText('text').toString().includes(rustText), {
    timeout: 25_000,
    message: () => `JS client to see the Rust insert; it has ${JSON.stringify(js.doc.getText('text').toString())}`
  })
  const finalFromRust = parsePeerOutput(await peer)
  assert.ok(finalFromRust.includes(jsText) && finalFromRust.includes(rustText), `Rust text ${JSON.stringify(finalFromRust)}`)
  // Rust inserted at its end after syncing, so after the JS text.
  assert.equal(js.doc.getText('text').toString(), finalFromRust, 'JS and Rust ended with the same text')
  assert.equal(finalFromRust, jsText + rustText)
})

serverTest('Rust and JS edits made concurrently are relayed both ways', async (ctx) => {
  const js = ctx.client('rust-concurrent')
  await waitSynced(js.provider)
  // The peer only finishes once it has received an edit JS makes after the peer has connected.
  const peer = runPeer(ctx, [
    '--url', `${ctx.server.url}/${ctx.docName('rust-concurrent')}`,
    '--insert', '[rust]',
    '--expect-contains', '[rust]',
    '--expect-contains', '[js-after-rust]',
    '--timeout-secs', '20'
  ])
  await waitFor(() => js.doc.getText('text').toString().includes('[rust]'), {
    timeout: 25_000,
    message: () => `JS client to see the Rust insert; it has ${JSON.stringify(js.doc.getText('text').toString())}`
  })
  js.doc.getText('text').insert(0, '[js-after-rust]')
  const finalFromRust = parsePeerOutput(await peer)
  assert.equal(finalFromRust, '[js-after-rust][rust]')
  assert.equal(js.doc.getText('text').toString(), finalFromRust)

  // The server holds the Rust-encoded edits: a fresh JS client gets them in its SyncStep2.
  const late = ctx.client('rust-concurrent')
  await waitSynced(late.provider)
  assert.equal(late.doc.getText('text').toString(), '[js-after-rust][rust]')
})
