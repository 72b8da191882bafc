// Interop test: a slowloris flood (thousands of half-open requests from one address) is shed by
// the header deadline while real y-websocket clients connect and sync, and the server's memory
// falls back once the flood is gone.

import assert from 'node:assert/strict'
import net from 'node:net'
import { readFileSync } from 'node:fs'
import { serverTest, waitFor, waitConverged, externalServerUrl } from './harness.mjs'

const FLOOD = 3000
const HEADER_TIMEOUT = '10s'

/** The server process's resident memory in KiB. */
function rssKiB (pid) {
  return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1])
}

/** The server's metrics, as a map from series (name and labels) to value. */
async function metrics (server) {
  const url = server.url.replace(/^ws:/, 'http:') + '/metrics'
  const text = await (await fetch(url)).text()
  const series = new Map()
  for (const line of text.split('\n')) {
    const m = /^(\S+) (\S+)$/.exec(line)
    if (m) series.set(m[1], Number(m[2]))
  }
  return series
}

serverTest('half-open requests are closed at the header deadline while y-websocket clients sync', async (ctx, t) => {
  const pid = ctx.server.child.pid
  const { hostname, port } = new URL(ctx.server.url)
  const before = rssKiB(pid)

  // Each sends a request line and one header, then nothing.
  const flood = { opened: 0, closed: 0, answered: 0, errors: 0 }
  const sockets = []
  for (let i = 0; i < FLOOD; i++) {
    const socket = net.connect({ host: hostname, port: Number(port) })
    socket.on('connect', () => {
      flood.opened++
      socket.write('GET /doc HTTP/1.1\r\nHost: x\r\n')
    })
    socket.on('data', () => { flood.answered++ })
    socket.on('error', () => { flood.errors++ })
    socket.on('close', () => { flood.closed++ })
    sockets.push(socket)
  }
  await waitFor(() => flood.opened === FLOOD, { message: () => `the flood to connect: ${JSON.stringify(flood)}` })
  await waitFor(async () => (await metrics(ctx.server)).get('concord_sockets_open') >= FLOOD, {
    message: 'the server to hold the whole flood'
  })
  const during = rssKiB(pid)

  // Real y-websocket clients are served meanwhile.
  const [a, b] = await ctx.clients('during-the-flood', 2)
  a.doc.getText('text').insert(0, 'typed during a slowloris flood')
  await waitConverged([a.doc, b.doc])
  assert.equal(b.doc.getText('text').toString(), 'typed during a slowloris flood')
  assert.ok(flood.closed < FLOOD, 'the clients synced while the flood was still open')

  // Every half-open socket is closed by the server, unanswered.
  await waitFor(() => flood.closed === FLOOD, {
    timeout: 60_000,
    message: () => `the server to close the flood: ${JSON.stringify(flood)}`
  })
  assert.equal(flood.answered, 0, 'a half-open request gets no answer, just a close')
  const series = await metrics(ctx.server)
  assert.equal(series.get('concord_sockets_timed_out_total{phase="header"}'), FLOOD)

  // The memory the flood took is given back (at least half of it).
  const grown = during - before
  assert.ok(grown > 0, `the flood took memory: ${before} KiB before, ${during} KiB during`)
  await waitFor(() => rssKiB(pid) <= before + grown / 2, {
    timeout: 30_000,
    message: () => `RSS to fall back: ${before} KiB before, ${during} KiB during, ${rssKiB(pid)} KiB now`
  })
  t.diagnostic(`server RSS: ${before} KiB before, ${during} KiB with ${FLOOD} half-open requests, ${rssKiB(pid)} KiB after`)
  for (const socket of sockets) socket.destroy()
}, {
  skip: externalServerUrl ? 'needs a server process of its own' : false,
  serverArgs: ['--in-memory', '--header-read-timeout', HEADER_TIMEOUT, '--max-sockets-per-address', String(FLOOD + 100)]
})
