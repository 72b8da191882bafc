// Interop test: several Concord processes share documents through one real redis-server (started
// here on a free loopback port, with its own config and temp dir: appendonly yes, appendfsync
// always). Real npm y-websocket clients spread over the nodes converge; a late joiner on a fourth
// node gets everything; one node killed with SIGKILL during a write storm from every node loses
// nothing that was acknowledged (10 seeded rounds); Redis killed with SIGKILL mid-storm and
// restarted loses nothing acknowledged, the nodes recover by themselves, and the edits made
// meanwhile arrive. The convergence, node-kill and Redis-kill tests run again on a real 3-master
// Redis Cluster (`redis-cli --cluster create`), where documents spread over the shards and the
// shard that holds the stormed document is the one killed. With `--redis-wait-replicas 1` and a
// real replica, a POST is answered only once the replica has the update, and waits (the node not
// ready) while the replica is gone.

import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { test } from 'node:test'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import {
  TEST_TIMEOUT_MS, defineRoots, docJson, externalServerUrl, makeRng, seedFromEnv, startServer,
  waitConverged, waitFor, waitSynced
} from './harness.mjs'
import { Redis, freePort, ping } from './redis-server.mjs'

const skip = externalServerUrl ? 'these tests start their own servers and Redis' : false

/** A 3-master Redis Cluster of this test, formed with `redis-cli --cluster create`. */
class RedisCluster {
  static async start (masters = 3) {
    const cluster = new RedisCluster()
    cluster.nodes = []
    for (let i = 0; i < masters; i++) {
      cluster.nodes.push(await Redis.start(['cluster-enabled yes', 'cluster-config-file nodes.conf',
        'cluster-node-timeout 2000', `cluster-port ${await freePort()}`]))
    }
    const created = spawnSync('redis-cli', ['--cluster', 'create',
      ...cluster.nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '0', '--cluster-yes'],
    { encoding: 'utf8' })
    assert.equal(created.status, 0, `redis-cli --cluster create: ${created.stdout}${created.stderr}`)
    await cluster.waitOk()
    return cluster
  }

  get args () { return ['--redis-url', this.nodes.map((n) => n.url).join(','), '--redis-cluster'] }

  /** Waits until every node says the cluster is ok and knows every node. */
  async waitOk () {
    for (const node of this.nodes) {
      await waitFor(() => {
        const info = node.cli('CLUSTER', 'INFO')
        return info.includes('cluster_state:ok') && info.includes(`cluster_known_nodes:${this.nodes.length}`)
      }, { timeout: 20_000, message: () => `cluster node ${node.port} to be ok: ${node.cli('CLUSTER', 'INFO')}` })
    }
  }

  /** The node whose shard holds `key` (the others answer MOVED). */
  ownerOf (key) {
    const owner = this.nodes.find((node) => node.cli('EXISTS', key) === '1')
    assert.ok(owner, `no shard holds ${key}`)
    return owner
  }

  async stop () {
    for (const node of this.nodes) await node.stop()
  }
}

/** A y-websocket client of document `name` on the node at `url`. */
function client (url, name, doc = new Y.Doc()) {
  defineRoots(doc)
  const provider = new WebsocketProvider(url, name, doc, {
    WebSocketPolyfill: WebSocket, disableBc: true, resyncInterval: -1
  })
  return { doc, provider }
}

function destroy (clients) {
  for (const { provider, doc } of clients) {
    try { provider.destroy() } catch { /* already */ }
    try { doc.destroy() } catch { /* already */ }
  }
}

/** `http://HOST:PORT` of a node. */
const httpBase = (server) => server.url.replace(/^ws:/, 'http:')

/**
 * Declares a test with a Redis and `n` Concord nodes on it, and the same test on a 3-master Redis
 * Cluster. Every node's stderr is appended to a failure.
 */
function redisTest (name, n, fn) {
  redisTestOn(false, name, n, fn)
  redisTestOn(true, name, n, fn)
}

function redisTestOn (cluster, name, n, fn) {
  test(cluster ? `cluster: ${name}` : name, { timeout: TEST_TIMEOUT_MS * 3, skip }, async () => {
    const redis = cluster ? await RedisCluster.start() : await Redis.start()
    const nodes = []
    const startNode = async (extra = []) => {
      const node = await startServer([...redis.args, ...extra])
      nodes.push(node)
      return node
    }
    let failure = null
    try {
      for (let i = 0; i < n; i++) await startNode()
      await fn({ redis, nodes, startNode })
    } catch (err) {
      failure = err
    }
    for (const node of nodes) {
      if (node.exit === null) {
        try { await node.stop() } catch (err) { failure = failure ?? err }
      }
    }
    await redis.stop()
    if (failure) {
      if (failure instanceof Error) {
        failure.message += nodes.map((node, i) => `\n--- node ${i} stderr (tail) ---\n${node.stderrTail(3000)}`).join('')
      }
      throw failure
    }
  })
}

/** Random edits of text, array and map by one client. */
function randomEdit (doc, rng, tag) {
  const roll = rng.next()
  doc.transact(() => {
    if (roll < 0.4) {
      const text = doc.getText('text')
      text.insert(Math.floor(rng.next() * (text.length + 1)), tag)
    } else if (roll < 0.6 && doc.getText('text').length > 2) {
      doc.getText('text').delete(0, 1)
    } else if (roll < 0.85) {
      doc.getArray('array').push([tag])
    } else {
      doc.getMap('map').set(`k${Math.floor(rng.next() * 5)}`, tag)
    }
  })
}

redisTest('y-websocket clients spread over three nodes converge; a late joiner on a fourth gets everything', 3, async ({ nodes, startNode }) => {
  const seed = seedFromEnv()
  const rng = makeRng(seed)
  const clients = nodes.flatMap((node) => [client(node.url, 'spread'), client(node.url, 'spread')])
  try {
    await Promise.all(clients.map((c) => waitSynced(c.provider)))
    for (let round = 0; round < 30; round++) {
      clients.forEach((c, i) => randomEdit(c.doc, rng, `${i}.${round} `))
    }
    await waitConverged(clients.map((c) => c.doc), { timeout: 30_000 })
    const json = docJson(clients[0].doc)
    assert.equal(clients[0].doc.getArray('array').length > 0, true, `seed ${seed}: edits were made`)

    // Presence crosses nodes.
    clients[0].provider.awareness.setLocalStateField('user', { name: 'ada' })
    const ada = clients[0].doc.clientID
    await waitFor(() => clients[5].provider.awareness.getStates().get(ada)?.user?.name === 'ada', {
      message: 'presence set on node 1 to reach node 3'
    })

    const fourth = await startNode()
    const late = client(fourth.url, 'spread')
    clients.push(late)
    await waitSynced(late.provider)
    assert.equal(docJson(late.doc), json, `seed ${seed}: the late joiner has the whole document`)
  } finally {
    destroy(clients)
  }
})

/**
 * Writers that POST updates (HTTP 200 = acknowledged: in Redis) adding unique items to the array
 * `array`, spread over the nodes, until stopped. Returns the acknowledged items.
 */
function postStorm (nodes, name, { writers = 6, prefix = '' } = {}) {
  const acknowledged = new Set()
  let stopped = false
  const runs = Array.from({ length: writers }, async (_, w) => {
    const doc = new Y.Doc()
    // Each POST carries everything this writer made since its last acknowledged POST: an update
    // of one Yjs client only applies after its predecessors, so one lost on a killed node must
    // travel again with the next.
    let acknowledgedState = Y.encodeStateVector(doc)
    for (let i = 0; !stopped; i++) {
      const item = `${prefix}w${w}-${i}`
      doc.getArray('array').push([item])
      const sending = Y.encodeStateVector(doc)
      const update = Y.encodeStateAsUpdate(doc, acknowledgedState)
      const node = nodes[(w + i) % nodes.length]
      try {
        const response = await fetch(`${httpBase(node)}/api/docs/${encodeURIComponent(name)}/update`, {
          method: 'POST',
          headers: { 'content-type': 'application/octet-stream' },
          body: update,
          signal: AbortSignal.timeout(5_000)
        })
        await response.arrayBuffer()
        if (response.status === 200) {
          acknowledged.add(item)
          acknowledgedState = sending
        }
      } catch {
        // A killed node or a timed-out request: not acknowledged. Pause so a dead node is not
        // hammered.
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
    }
  })
  return {
    acknowledged,
    async stop () {
      stopped = true
      await Promise.all(runs)
    }
  }
}

/** Every item of the array `array` in `doc`. */
const items = (doc) => new Set(doc.getArray('array').toArray())

redisTest('a node killed with SIGKILL during a write storm loses nothing acknowledged (10 seeded rounds)', 3, async ({ redis, nodes }) => {
  const seed = seedFromEnv()
  const rng = makeRng(seed)
  for (let round = 0; round < 10; round++) {
    const name = `storm-${round}`
    // WebSocket clients on every node edit too, and keep their own edits when their node dies.
    const live = nodes.map((node) => client(node.url, name))
    let storm = null
    let editing = null
    try {
      await Promise.all(live.map((c) => waitSynced(c.provider)))
      storm = postStorm(nodes, name, { prefix: `r${round}-` })
      editing = setInterval(() => live.forEach((c, i) => randomEdit(c.doc, rng, `${round}.${i} `)), 5)
      await waitFor(() => storm.acknowledged.size >= 20, { message: 'the storm to get going' })
      const victim = Math.floor(rng.next() * nodes.length)
      const port = nodes[victim].port
      await nodes[victim].kill()
      await waitFor(() => storm.acknowledged.size >= 40, { message: 'the storm to go on without the killed node' })
      clearInterval(editing)
      await storm.stop()
      // The killed node's client moves to another node, with its unsaved edits.
      const moved = live[victim]
      moved.provider.destroy()
      const survivor = nodes[(victim + 1) % nodes.length]
      live[victim] = client(survivor.url, name, moved.doc)
      await waitConverged(live.map((c) => c.doc), { timeout: 30_000 })
      for (const item of storm.acknowledged) {
        assert.ok(items(live[0].doc).has(item), `seed ${seed}, round ${round}: acknowledged ${item} is missing`)
      }
      // The killed node comes back on its port and serves the same document.
      nodes[victim] = await startServer([...redis.args, '--port', String(port)])
      const back = client(nodes[victim].url, name)
      live.push(back)
      await waitSynced(back.provider)
      await waitConverged(live.map((c) => c.doc), { timeout: 30_000 })
      for (const item of storm.acknowledged) {
        assert.ok(items(back.doc).has(item), `seed ${seed}, round ${round}: ${item} missing after the restart`)
      }
    } finally {
      clearInterval(editing)
      await storm?.stop()
      destroy(live)
    }
  }
})

redisTest('Redis killed with SIGKILL mid-storm and restarted loses nothing acknowledged; nodes recover by themselves', 3, async ({ redis, nodes }) => {
  const seed = seedFromEnv()
  const rng = makeRng(seed)
  const name = 'redis-down'
  const live = nodes.map((node) => client(node.url, name))
  let storm = null
  try {
    await Promise.all(live.map((c) => waitSynced(c.provider)))
    storm = postStorm(nodes, name)
    await waitFor(() => storm.acknowledged.size >= 30, { message: 'the storm to get going' })
    // On a cluster, the shard that holds the document.
    const shard = redis.ownerOf(`concord:{${name}}:log`)
    await shard.kill()
    // Edits made while Redis is down are relayed on their node, and stored once it is back.
    live.forEach((c, i) => randomEdit(c.doc, rng, `down${i} `))
    const before = storm.acknowledged.size
    await shard.spawn()
    await waitFor(() => storm.acknowledged.size >= before + 30, {
      timeout: 30_000, message: 'acknowledgements to resume once Redis is back'
    })
    await storm.stop()
    await waitConverged(live.map((c) => c.doc), { timeout: 30_000 })
    for (const item of storm.acknowledged) {
      assert.ok(items(live[0].doc).has(item), `acknowledged ${item} is missing`)
    }
    // A fresh client on each node, reading from Redis, has everything too.
    const fresh = nodes.map((node) => client(node.url, name))
    live.push(...fresh)
    await Promise.all(fresh.map((c) => waitSynced(c.provider)))
    await waitConverged(live.map((c) => c.doc), { timeout: 30_000 })
    for (const node of nodes) {
      const ready = await fetch(`${httpBase(node)}/readyz`)
      assert.equal(ready.status, 200, 'every node is ready again')
    }
  } finally {
    await storm?.stop()
    destroy(live)
  }
})

test('--redis-wait-replicas 1: a POST is acknowledged only once the replica has it; while it is gone the node is not ready and the update waits', { timeout: TEST_TIMEOUT_MS * 2, skip }, async () => {
  const primary = await Redis.start()
  const startReplica = () => Redis.start([`replicaof 127.0.0.1 ${primary.port}`])
  let replica = await startReplica()
  let node = null
  const post = (update, timeout) => fetch(`${httpBase(node)}/api/docs/replicated/update`, {
    method: 'POST',
    headers: { 'content-type': 'application/octet-stream' },
    body: update,
    signal: AbortSignal.timeout(timeout)
  })
  const doc = new Y.Doc()
  const edit = (word) => {
    const before = Y.encodeStateVector(doc)
    doc.getArray('array').push([word])
    return Y.encodeStateAsUpdate(doc, before)
  }
  try {
    node = await startServer([...primary.args, '--redis-wait-replicas', '1'])
    await waitFor(() => /every acknowledged update is on --redis-wait-replicas replicas/.test(node.stderrTail()), {
      message: () => 'the start-up line to say what an acknowledgement means; stderr:\n' + node.stderrTail()
    })
    const first = await post(edit('one'), 30_000)
    assert.equal(first.status, 200, await first.text())
    // The replica has what was acknowledged.
    await waitFor(() => Number(replica.cli('XLEN', 'concord:{replicated}:log')) >= 1, {
      message: () => 'the replica to hold the stream: ' + replica.cli('KEYS', '*')
    })

    await replica.kill()
    let answered = false
    const waiting = post(edit('two'), 120_000).finally(() => { answered = true })
    // Readiness turns 503 once the append has waited for the replica in vain: the POST must
    // still be unanswered then.
    await waitFor(async () => (await fetch(`${httpBase(node)}/readyz`)).status === 503, {
      message: 'readiness to say the node waits for its replica'
    })
    assert.equal(answered, false, 'an update was acknowledged with its replica gone')

    replica = await startReplica()
    const second = await waiting
    assert.equal(second.status, 200, await second.text())
    await waitFor(async () => (await fetch(`${httpBase(node)}/readyz`)).status === 200, {
      message: 'readiness to come back with the replica'
    })
    const stored = await fetch(`${httpBase(node)}/api/docs/replicated?format=json`)
    assert.deepEqual((await stored.json()).array, ['one', 'two'])
  } catch (err) {
    if (node && err instanceof Error) err.message += `\n--- node stderr (tail) ---\n${node.stderrTail(3000)}`
    throw err
  } finally {
    if (node && node.exit === null) await node.stop()
    await replica.stop()
    await primary.stop()
  }
})

/** A WebSocket that connects from `localAddress` (a loopback address such as 127.0.0.2). */
const webSocketFrom = (localAddress) => class extends WebSocket {
  constructor (url, protocols, options = {}) {
    super(url, protocols, { ...options, localAddress })
  }
}

/** Opens a WebSocket from `localAddress`; resolves with 'open' or the HTTP status it got. */
function tryConnect (url, localAddress) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { localAddress })
    ws.on('open', () => resolve({ status: 'open', ws }))
    ws.on('unexpected-response', (_req, res) => { resolve({ status: res.statusCode }); res.resume() })
    ws.on('error', (err) => resolve({ status: err.message }))
  })
}

/** haproxy in front of `nodes`, on a free port, with its own config (health checks on /healthz). */
async function startHaproxy (nodes) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'concord-haproxy-'))
  const port = await freePort()
  const config = path.join(dir, 'haproxy.cfg')
  writeFileSync(config, [
    'global', '  maxconn 4096',
    'defaults', '  mode http', '  timeout connect 2s', '  timeout client 60s', '  timeout server 60s',
    '  timeout tunnel 1h', '  retries 3', '  option redispatch',
    'frontend front', `  bind 127.0.0.1:${port}`, '  option forwardfor', '  default_backend nodes',
    // "first": every client on the first healthy node, so per-IP counts are on one node.
    'backend nodes', '  balance first', '  option httpchk GET /healthz',
    ...nodes.map((node, i) => `  server n${i} 127.0.0.1:${node.port} check inter 300 fall 2 rise 1`)
  ].join('\n') + '\n')
  const child = spawn('haproxy', ['-f', config, '-db'], { stdio: ['ignore', 'pipe', 'pipe'] })
  let log = ''
  child.stdout.on('data', (c) => { log += c })
  child.stderr.on('data', (c) => { log += c })
  const exited = new Promise((resolve) => child.on('exit', resolve))
  await waitFor(async () => {
    try { return (await fetch(`http://127.0.0.1:${port}/healthz`)).status === 200 } catch { return false }
  }, { message: () => 'haproxy to serve /healthz; its output:\n' + log })
  return {
    url: `ws://127.0.0.1:${port}`,
    http: `http://127.0.0.1:${port}`,
    log: () => log,
    async stop () {
      child.kill('SIGKILL')
      await exited
      rmSync(dir, { recursive: true, force: true })
    }
  }
}

test('behind haproxy: per-IP limits see the client through the trusted proxy, CORS preflights are answered, clients move to another node when theirs is killed', { timeout: TEST_TIMEOUT_MS * 2, skip }, async () => {
  const redis = await Redis.start()
  const args = ['--redis-url', redis.url, '--trusted-proxy', '127.0.0.1', '--max-connections-per-ip', '2',
    '--cors-origin', 'https://app.example']
  const nodes = []
  let proxy = null
  const clients = []
  let failure = null
  try {
    for (let i = 0; i < 3; i++) nodes.push(await startServer(args))
    proxy = await startHaproxy(nodes)

    // Per-IP limits: two connections from 127.0.0.2 are let in, a third is refused; 127.0.0.3 is
    // another client, although every connection comes from haproxy.
    const opened = []
    for (const from of ['127.0.0.2', '127.0.0.2']) {
      const result = await tryConnect(`${proxy.url}/limits`, from)
      assert.equal(result.status, 'open', `a connection from ${from}`)
      opened.push(result.ws)
    }
    assert.equal((await tryConnect(`${proxy.url}/limits`, '127.0.0.2')).status, 429, 'a third from 127.0.0.2')
    const other = await tryConnect(`${proxy.url}/limits`, '127.0.0.3')
    assert.equal(other.status, 'open', 'another address is another client')
    for (const ws of [...opened, other.ws]) ws.terminate()

    // CORS preflight for the HTTP API, through the proxy.
    const preflight = await fetch(`${proxy.http}/api/docs/x/update`, {
      method: 'OPTIONS',
      headers: { origin: 'https://app.example', 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type' }
    })
    assert.ok(preflight.status === 200 || preflight.status === 204, `preflight status ${preflight.status}`)
    assert.equal(preflight.headers.get('access-control-allow-origin'), 'https://app.example')
    const stranger = await fetch(`${proxy.http}/api/docs/x/update`, {
      method: 'OPTIONS',
      headers: { origin: 'https://evil.example', 'access-control-request-method': 'POST' }
    })
    assert.equal(stranger.headers.get('access-control-allow-origin'), null, 'other origins get no CORS grant')

    // Two y-websocket clients through the proxy (both on the first node), then that node dies.
    for (const from of ['127.0.0.4', '127.0.0.5']) {
      const doc = new Y.Doc()
      defineRoots(doc)
      const provider = new WebsocketProvider(proxy.url, 'behind-proxy', doc, {
        WebSocketPolyfill: webSocketFrom(from), disableBc: true, resyncInterval: -1
      })
      clients.push({ doc, provider })
    }
    await Promise.all(clients.map((c) => waitSynced(c.provider)))
    clients[0].doc.getText('text').insert(0, 'before ')
    await waitConverged(clients.map((c) => c.doc))
    await nodes[0].kill()
    // Edited while their node is gone: kept locally, sent after the reconnect.
    clients[1].doc.getText('text').insert(0, 'during ')
    await waitFor(() => clients.every((c) => c.provider.wsconnected && c.provider.synced), {
      timeout: 30_000, message: 'both clients to reconnect through haproxy to another node'
    })
    clients[0].doc.getArray('array').push(['after'])
    await waitConverged(clients.map((c) => c.doc), { timeout: 30_000 })
    assert.equal(clients[0].doc.getText('text').toString(), 'during before ')
    // A fresh client directly on the third node reads all of it from Redis.
    const direct = client(nodes[2].url, 'behind-proxy')
    clients.push(direct)
    await waitSynced(direct.provider)
    await waitConverged(clients.map((c) => c.doc), { timeout: 30_000 })
  } catch (err) {
    failure = err
  }
  destroy(clients)
  if (proxy) await proxy.stop()
  for (const node of nodes) {
    if (node.exit === null) {
      try { await node.stop() } catch (err) { failure = failure ?? err }
    }
  }
  await redis.stop()
  if (failure) {
    if (failure instanceof Error && proxy) failure.message += `\n--- haproxy ---\n${proxy.log()}`
    throw failure
  }
})
