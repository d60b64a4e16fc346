import type { PropertySet } from "./ports.js";

const MASK = "***";

/**
 * Masks secret property values wherever they appear: log lines, reasons, results. The secrets are the values
 * the request's JSON pointers name inside step_context.json's "properties" object ("/<owner>/a/b").
 */
export class SecretMasker {
  private readonly secrets: string[];

  constructor(properties: PropertySet[], pointers: string[]) {
    const root = Object.fromEntries(properties.map((set) => [set.owner, set.properties]));
    const values = new Set<string>();
    for (const pointer of pointers) collect(resolvePointer(root, pointer), values);
    // Longest first, so that a secret containing another is masked whole.
    this.secrets = [...values].filter((value) => value.length > 0).sort((a, b) => b.length - a.length);
  }

  text(value: string): string {
    let masked = value;
    for (const secret of this.secrets) masked = masked.split(secret).join(MASK);
    return masked;
  }

  /** A deep copy with every string masked. */
  json<T>(value: T): T {
    if (this.secrets.length === 0) return value;
    return JSON.parse(JSON.stringify(value), (_key, item: unknown) => (typeof item === "string" ? this.text(item) : item)) as T;
  }
}

/** RFC 6901. Throws when the pointer is malformed; a pointer to nothing yields undefined. */
export function resolvePointer(root: unknown, pointer: string): unknown {
  if (!pointer.startsWith("/")) throw new Error(`secret pointer "${pointer}" must start with "/"`);
  let current = root;
  for (const token of pointer.slice(1).split("/")) {
    const key = token.replace(/~1/g, "/").replace(/~0/g, "~");
    if (typeof current !== "object" || current === null) return undefined;
    current = (current as Record<string, unknown>)[key];
  }
  return current;
}

// Only strings: masking a number such as 1 everywhere would garble every log.
function collect(value: unknown, into: Set<string>): void {
  if (value === undefined || value === null) return;
  if (typeof value === "string") into.add(value);
  else if (Array.isArray(value)) value.forEach((item) => collect(item, into));
  else if (typeof value === "object") Object.values(value).forEach((item) => collect(item, into));
}
