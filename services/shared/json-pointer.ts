/** A string that is not an RFC 6901 JSON pointer. */
export class JsonPointerError extends Error {
  constructor(pointer: string, why: string) {
    super(`"${pointer}" is not a JSON pointer: ${why}`);
    this.name = "JsonPointerError";
  }
}

/**
 * RFC 6901: a pointer's reference tokens, decoded ("~1" to "/", then "~0" to "~", so "~01" is "~1").
 * "" (the whole document) has none. Throws JsonPointerError when it does not start with "/" or has a "~"
 * not followed by 0 or 1.
 */
export function parseJsonPointer(pointer: string): string[] {
  if (pointer === "") return [];
  if (!pointer.startsWith("/")) throw new JsonPointerError(pointer, 'it must be empty or start with "/"');
  if (/~[^01]|~$/.test(pointer)) throw new JsonPointerError(pointer, '"~" must be followed by 0 or 1');
  return pointer
    .slice(1)
    .split("/")
    .map((token) => token.replace(/~1/g, "/").replace(/~0/g, "~"));
}

/**
 * The value a pointer names in a JSON document: an own member of an object, an element of an array (by
 * decimal index); undefined when it names nothing. Throws JsonPointerError for a malformed pointer.
 */
export function resolveJsonPointer(root: unknown, pointer: string): unknown {
  let current = root;
  for (const token of parseJsonPointer(pointer)) {
    if (typeof current !== "object" || current === null) return undefined;
    if (Array.isArray(current) && !/^(0|[1-9][0-9]*)$/.test(token)) return undefined;
    if (!Object.hasOwn(current, token)) return undefined;
    current = (current as Record<string, unknown>)[token];
  }
  return current;
}
