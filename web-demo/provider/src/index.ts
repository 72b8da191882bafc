// @concord/http-provider: a Yjs provider that syncs a Y.Doc with a Concord server over HTTP
// (Server-Sent Events or long-polling to receive, POST to send), for networks where WebSockets
// do not get through.

export {
  HttpProvider,
  HttpProviderError,
  type HttpProviderEvents,
  type HttpProviderOptions,
  type Operation,
  type ReceivedMessage,
  type Status,
  type Transport
} from './provider.js'
export { SseParser, type SseEvent } from './sse.js'
export { fromBase64Url, toBase64Url } from './base64url.js'
export { Backoff, backoffDelay, type BackoffOptions } from './backoff.js'
export { comparePositions, parsePosition, type Position } from './position.js'
