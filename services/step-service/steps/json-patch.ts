/** RFC 6902 JSON Patch over plain JSON values, and the overlap test that finds conflicting patches. */

export type JsonOperation = Record<string, unknown>;

export class PatchError extends Error {}

/** The reference tokens of an RFC 6901 pointer ("" is the whole document). */
export function pointerTokens(pointer: string): string[] {
  if (pointer === "") return [];
  if (!pointer.startsWith("/")) throw new PatchError(`"${pointer}" is not a JSON pointer`);
  return pointer
    .slice(1)
    .split("/")
    .map((token) => token.replace(/~1/g, "/").replace(/~0/g, "~"));
}

/** Applies the operations in order to a copy of the document; throws PatchError naming the operation that fails. */
export function applyPatch(document: unknown, operations: JsonOperation[]): unknown {
  let root = structuredClone(document);
  operations.forEach((operation, index) => {
    try {
      root = applyOperation(root, operation);
    } catch (error) {
      if (error instanceof PatchError) throw new PatchError(`operation ${index} (${operation.op} ${JSON.stringify(operation.path)}): ${error.message}`);
      throw error;
    }
  });
  return root;
}

function applyOperation(root: unknown, operation: JsonOperation): unknown {
  const path = String(operation.path);
  switch (operation.op) {
    case "add":
      return add(root, pointerTokens(path), structuredClone(operation.value));
    case "remove":
      return remove(root, pointerTokens(path)).root;
    case "replace": {
      const tokens = pointerTokens(path);
      get(root, tokens);
      return add(remove(root, tokens).root, tokens, structuredClone(operation.value));
    }
    case "move": {
      const from = pointerTokens(String(operation.from));
      if (tokens(path).length > from.length && isPrefix(from, pointerTokens(path))) throw new PatchError("cannot move a value into itself");
      const taken = remove(root, from);
      return add(taken.root, pointerTokens(path), taken.value);
    }
    case "copy":
      return add(root, pointerTokens(path), structuredClone(get(root, pointerTokens(String(operation.from)))));
    case "test":
      if (!deepEqual(get(root, pointerTokens(path)), operation.value)) throw new PatchError("the test failed: the value differs");
      return root;
    default:
      throw new PatchError(`unknown op ${JSON.stringify(operation.op)}`);
  }
}

function tokens(path: string): string[] {
  return pointerTokens(path);
}

function get(root: unknown, path: string[]): unknown {
  let node = root;
  for (const token of path) {
    if (Array.isArray(node)) {
      const index = arrayIndex(token, node.length - 1);
      node = node[index];
    } else if (isObject(node) && Object.hasOwn(node, token)) {
      node = node[token];
    } else {
      throw new PatchError(`nothing at /${path.join("/")}`);
    }
  }
  return node;
}

function add(root: unknown, path: string[], value: unknown): unknown {
  if (path.length === 0) return value;
  const parent = get(root, path.slice(0, -1));
  const last = path[path.length - 1]!;
  if (Array.isArray(parent)) {
    if (last === "-") parent.push(value);
    else parent.splice(arrayIndex(last, parent.length), 0, value);
  } else if (isObject(parent)) {
    parent[last] = value;
  } else {
    throw new PatchError(`/${path.slice(0, -1).join("/")} is not an object or array`);
  }
  return root;
}

function remove(root: unknown, path: string[]): { root: unknown; value: unknown } {
  if (path.length === 0) return { root: null, value: root };
  const parent = get(root, path.slice(0, -1));
  const last = path[path.length - 1]!;
  if (Array.isArray(parent)) {
    const index = arrayIndex(last, parent.length - 1);
    return { root, value: parent.splice(index, 1)[0] };
  }
  if (isObject(parent) && Object.hasOwn(parent, last)) {
    const value = parent[last];
    delete parent[last];
    return { root, value };
  }
  throw new PatchError(`nothing at /${path.join("/")}`);
}

function arrayIndex(token: string, max: number): number {
  if (!/^(0|[1-9][0-9]*)$/.test(token)) throw new PatchError(`"${token}" is not an array index`);
  const index = Number(token);
  if (index > max) throw new PatchError(`index ${index} is out of range`);
  return index;
}

function isPrefix(prefix: string[], path: string[]): boolean {
  return prefix.length <= path.length && prefix.every((token, index) => path[index] === token);
}

/** The pointers an operation writes ("test" writes nothing; "move" writes its source too). */
function writtenPaths(operation: JsonOperation): string[][] {
  switch (operation.op) {
    case "test":
      return [];
    case "move":
      return [pointerTokens(String(operation.from)), pointerTokens(String(operation.path))];
    default:
      return [pointerTokens(String(operation.path))];
  }
}

export interface PatchConflict {
  /** The pointer of the first operation, relative to the owner's properties. */
  path: string;
  otherPath: string;
}

/**
 * Whether two patches of the same document conflict: one writes where the other writes, or inside it, or
 * around it. Operations that are the same (the same op, path and value) do not conflict: both made the
 * same change.
 */
export function findConflict(left: JsonOperation[], right: JsonOperation[]): PatchConflict | undefined {
  for (const a of left) {
    for (const b of right) {
      if (a.op === b.op && a.path === b.path && a.from === b.from && deepEqual(a.value, b.value)) continue;
      for (const pathA of writtenPaths(a)) {
        for (const pathB of writtenPaths(b)) {
          if (isPrefix(pathA, pathB) || isPrefix(pathB, pathA)) return { path: toPointer(pathA), otherPath: toPointer(pathB) };
        }
      }
    }
  }
  return undefined;
}

export function toPointer(path: string[]): string {
  return path.map((token) => `/${token.replace(/~/g, "~0").replace(/\//g, "~1")}`).join("");
}

export function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a)) return Array.isArray(b) && a.length === b.length && a.every((item, index) => deepEqual(item, b[index]));
  if (isObject(a) && isObject(b)) {
    const keys = Object.keys(a);
    return keys.length === Object.keys(b).length && keys.every((key) => Object.hasOwn(b, key) && deepEqual(a[key], b[key]));
  }
  return false;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
