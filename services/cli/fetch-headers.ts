/**
 * The Fetch standard's Headers as far as Connect uses it: names compared case-insensitively, a repeated name's
 * values joined with ", ", iteration sorted by name. The CLI's bundle uses this class wherever its code names
 * `Headers` (esbuild's --inject): Node 20 loads its own from undici on first use, about 15 ms of every
 * command's start. The services keep Node's.
 */
export class Headers {
  readonly #values = new Map<string, string>();

  constructor(init?: Headers | Iterable<readonly [string, string]> | Record<string, string | readonly string[]>) {
    if (init === undefined) return;
    const entries = Symbol.iterator in init ? (init as Iterable<readonly [string, string]>) : Object.entries(init);
    for (const [name, value] of entries) {
      for (const one of typeof value === "string" ? [value] : value) this.append(name, one);
    }
  }

  append(name: string, value: string): void {
    const key = name.toLowerCase();
    const previous = this.#values.get(key);
    this.#values.set(key, previous === undefined ? normalised(value) : `${previous}, ${normalised(value)}`);
  }

  set(name: string, value: string): void {
    this.#values.set(name.toLowerCase(), normalised(value));
  }

  get(name: string): string | null {
    return this.#values.get(name.toLowerCase()) ?? null;
  }

  has(name: string): boolean {
    return this.#values.has(name.toLowerCase());
  }

  delete(name: string): void {
    this.#values.delete(name.toLowerCase());
  }

  forEach(callback: (value: string, name: string, headers: Headers) => void, thisArg?: unknown): void {
    for (const [name, value] of this.entries()) callback.call(thisArg, value, name, this);
  }

  *entries(): IterableIterator<[string, string]> {
    yield* [...this.#values].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  }

  *keys(): IterableIterator<string> {
    for (const [name] of this.entries()) yield name;
  }

  *values(): IterableIterator<string> {
    for (const [, value] of this.entries()) yield value;
  }

  [Symbol.iterator](): IterableIterator<[string, string]> {
    return this.entries();
  }
}

/** As fetch stores a value: without leading and trailing whitespace. */
function normalised(value: string): string {
  return String(value).replace(/^[\t\n\r ]+|[\t\n\r ]+$/g, "");
}
