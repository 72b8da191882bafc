import { fileURLToPath } from 'node:url'
import type { IncomingMessage } from 'node:http'
import { defineConfig } from 'vite'

// The Concord server `npm run dev` talks to.
const server = process.env.CONCORD_DEV_SERVER ?? 'http://127.0.0.1:1234'

/** Vite's own sockets (hot reload) are not documents. */
const isViteSocket = (req: IncomingMessage): boolean =>
  (req.headers['sec-websocket-protocol'] ?? '').startsWith('vite')

export default defineConfig({
  // Relative asset URLs: the built app works wherever the server mounts it (e.g. under /collab/).
  base: './',
  resolve: {
    // The HTTP provider is compiled from its source, so the app does not need it built first.
    alias: {
      '@concord/http-provider': fileURLToPath(new URL('./provider/src/index.ts', import.meta.url))
    },
    // One copy of each, whatever provider/node_modules holds: Yjs breaks (and warns) when two
    // copies meet, and the Awareness and Doc classes must be the app's own.
    dedupe: ['yjs', 'lib0', 'y-protocols']
  },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022'
  },
  server: {
    proxy: {
      '/api': { target: server, changeOrigin: true },
      // Any other WebSocket is a document: the whole path is its name, or none (`/`, the
      // Hocuspocus endpoint of the rich text view). Plain HTTP requests and Vite's own socket
      // are passed through to Vite (a string result means "not proxied").
      '^/.*': {
        target: server.replace(/^http/, 'ws'),
        ws: true,
        bypass: (req, res) => (res !== undefined || isViteSocket(req) ? req.url : undefined)
      }
    }
  }
})
