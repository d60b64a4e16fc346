/**
 * Sets an entry of a map kept in order of use (least recently used first) as the most recently used, and drops
 * the least recently used ones past `limit`: the bounded caches of the services (contexts, images, manifests …).
 */
export function keepRecent<K, V>(entries: Map<K, V>, key: K, value: V, limit: number): void {
  entries.delete(key);
  entries.set(key, value);
  while (entries.size > limit) entries.delete(entries.keys().next().value as K);
}
