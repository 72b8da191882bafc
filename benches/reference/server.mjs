// The reference Yjs WebSocket server, as `@y/websocket-server` ships it (its `src/server.js`:
// an http server whose upgrades go to `setupWSConnection`), with two changes for load runs:
// it listens on a given host and port, where port 0 picks a free one and the chosen address is
// printed as `listening on HOST:PORT` (the line concord-server prints), and documents are
// kept in memory only, like `concord-server --in-memory`.
//
//   node server.mjs [--host 127.0.0.1] [--port 0]     (or HOST= / PORT= in the environment)

import http from 'node:http'
import process from 'node:process'

// utils.js reads YPERSISTENCE when it is imported: unset, documents stay in memory.
delete process.env.YPERSISTENCE

const { default: WebSocket } = await import('ws')
const { setupWSConnection } = await import('@y/websocket-server/utils')

const flag = (name) => {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? process.argv[i + 1] : undefined
}
const host = flag('host') ?? process.env.HOST ?? '127.0.0.1'
const port = Number.parseInt(flag('port') ?? process.env.PORT ?? '1234', 10)

const wss = new WebSocket.Server({ noServer: true })
wss.on('connection', setupWSConnection)

// noDelay: Nagle's algorithm off on accepted sockets, as concord-server does.
const server = http.createServer({ noDelay: true }, (_request, response) => {
  response.writeHead(200, { 'Content-Type': 'text/plain' })
  response.end('okay')
})
server.on('upgrade', (request, socket, head) => {
  wss.handleUpgrade(request, socket, head, (ws) => {
    wss.emit('connection', ws, request)
  })
})

server.listen(port, host, () => {
  const address = server.address()
  console.log(`listening on ${address.address}:${address.port}`)
})

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => process.exit(0))
}
