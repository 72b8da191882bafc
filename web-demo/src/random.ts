// Readable random names: rooms that can be read out loud and shared, and friendly display names
// for people who did not pick one.

const ADJECTIVES = [
  'amber', 'brave', 'calm', 'clever', 'cosmic', 'curious', 'eager', 'gentle', 'golden', 'happy',
  'jolly', 'keen', 'lively', 'lucky', 'mellow', 'nimble', 'quiet', 'rapid', 'sunny', 'swift',
  'tidy', 'vivid', 'witty', 'zesty'
] as const

const ANIMALS = [
  'badger', 'beaver', 'crane', 'dolphin', 'falcon', 'ferret', 'gecko', 'heron', 'koala', 'lemur',
  'lynx', 'marten', 'narwhal', 'otter', 'owl', 'panda', 'puffin', 'quokka', 'raven', 'seal',
  'tapir', 'walrus', 'wombat', 'yak'
] as const

function pick<T> (items: readonly T[]): T {
  return items[Math.floor(Math.random() * items.length)]!
}

function capitalize (word: string): string {
  return word.charAt(0).toUpperCase() + word.slice(1)
}

/** A room name such as `room-amber-otter-42` (characters `[a-z0-9-]` only). */
export function randomRoom (): string {
  return `room-${pick(ADJECTIVES)}-${pick(ANIMALS)}-${10 + Math.floor(Math.random() * 90)}`
}

/** A display name such as `Curious Otter`. */
export function randomName (): string {
  return `${capitalize(pick(ADJECTIVES))} ${capitalize(pick(ANIMALS))}`
}

/**
 * Colors for people (carets, name labels, pointers, presence dots). Each one keeps white label
 * text above the WCAG AA ratio of 4.5:1 and stays distinct from its neighbours.
 */
export const USER_COLORS = [
  '#b91c1c', '#c2410c', '#a16207', '#4d7c0f', '#047857', '#0e7490',
  '#1d4ed8', '#4338ca', '#7e22ce', '#be185d'
] as const

export function randomUserColor (): string {
  return pick(USER_COLORS)
}

/** Sticky-note backgrounds: light enough for dark text at well over 4.5:1. */
export const NOTE_COLORS = [
  { name: 'Yellow', value: '#fef08a' },
  { name: 'Pink', value: '#fbcfe8' },
  { name: 'Blue', value: '#bfdbfe' },
  { name: 'Green', value: '#bbf7d0' },
  { name: 'Purple', value: '#e9d5ff' },
  { name: 'Orange', value: '#fed7aa' }
] as const

export function randomNoteColor (): string {
  return pick(NOTE_COLORS).value
}

/** A short random id for notes and to-dos (unique enough within one document). */
export function randomId (): string {
  const bytes = crypto.getRandomValues(new Uint8Array(9))
  return Array.from(bytes, (b) => b.toString(36).padStart(2, '0')).join('').slice(0, 12)
}
