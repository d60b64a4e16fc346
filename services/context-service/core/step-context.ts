import { zipSync } from "fflate";
import { invalidArgument } from "./errors.js";

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

export interface PropertySetInput {
  owner: string;
  properties: JsonObject;
}

/** context.change, context.step and context.user of step_context.json, as OpsChain's users read them. */
export interface StepContextValues {
  change: Record<string, Json>;
  step: Record<string, Json>;
  user: Record<string, Json>;
}

export interface StepContextInput {
  gitRev: string;
  gitSha: string;
  /** In merge order, lowest precedence first. */
  properties: PropertySetInput[];
  values: StepContextValues;
}

export interface StepContextLimits {
  maxPropertiesBytes: number;
}

/** What a secret value becomes in the build context's copy. */
export const REDACTED = "[REDACTED]";
/** The zip entry's time, built from local-time parts because fflate writes DOS times from local time. */
const ZIP_TIME = new Date(1980, 0, 1, 0, 0, 0);
const OWNER = /^[a-z][a-z0-9_-]{0,62}$/;
const MAX_OWNERS = 32;
const MAX_SECRET_POINTERS = 1000;

/** Checks the properties (owners, sizes, opschain.env) and the secret pointers before anything is written. */
export function checkStepContextInput(input: StepContextInput, secretPointers: string[], limits: StepContextLimits): void {
  if (input.properties.length > MAX_OWNERS) throw invalidArgument(`properties has ${input.properties.length} owners; at most ${MAX_OWNERS}`);
  const seen = new Set<string>();
  let bytes = 0;
  for (const [position, set] of input.properties.entries()) {
    if (!OWNER.test(set.owner)) throw invalidArgument(`properties[${position}].owner "${set.owner}" must be lower case letters, digits, '_' or '-' (e.g. "project")`);
    if (seen.has(set.owner)) throw invalidArgument(`properties[${position}].owner "${set.owner}" appears twice`);
    seen.add(set.owner);
    if (set.properties === null || typeof set.properties !== "object" || Array.isArray(set.properties)) {
      throw invalidArgument(`properties[${position}] (${set.owner}) must be a JSON object`);
    }
    bytes += Buffer.byteLength(JSON.stringify(set.properties));
    const opschain = set.properties.opschain;
    const env = opschain && typeof opschain === "object" && !Array.isArray(opschain) ? opschain.env : undefined;
    if (env !== undefined) {
      if (env === null || typeof env !== "object" || Array.isArray(env)) throw invalidArgument(`properties of ${set.owner}: opschain.env must be an object of NAME: value`);
      for (const [name, value] of Object.entries(env)) {
        if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw invalidArgument(`properties of ${set.owner}: opschain.env name "${name}" is not an environment variable name`);
        if (value !== null && typeof value === "object") throw invalidArgument(`properties of ${set.owner}: opschain.env.${name} must be a string, number or boolean`);
      }
    }
  }
  if (bytes > limits.maxPropertiesBytes) throw invalidArgument(`properties are ${bytes} bytes of JSON; at most ${limits.maxPropertiesBytes}`);
  if (secretPointers.length > MAX_SECRET_POINTERS) throw invalidArgument(`${secretPointers.length} secret pointers; at most ${MAX_SECRET_POINTERS}`);
  for (const pointer of secretPointers) {
    if (!pointer.startsWith("/") || pointer.length < 2 || pointer.length > 1024 || /~[^01]|~$/.test(pointer)) {
      throw invalidArgument(`secret pointer "${pointer}" is not a JSON pointer into properties, e.g. "/project/opschain/env/API_TOKEN"`);
    }
  }
}

/** step_context.json's document: {"context": {...}, "properties": {"<owner>": {...}}}. */
export function stepContextDocument(input: StepContextInput): JsonObject {
  const properties: JsonObject = {};
  for (const set of input.properties) properties[set.owner] = set.properties;
  return {
    context: {
      change: { ...input.values.change, git_rev: input.gitRev, commit_sha: input.gitSha },
      step: input.values.step,
      user: input.values.user,
      parent_order: input.properties.map((set) => set.owner),
    },
    properties,
  };
}

/**
 * A copy of the document with the values the pointers name (RFC 6901, relative to "properties") replaced.
 * Returns the pointers that named nothing, so the caller can warn about a likely typo.
 */
export function redactSecrets(document: JsonObject, pointers: string[]): { redacted: JsonObject; unmatched: string[] } {
  const redacted = structuredClone(document);
  const unmatched: string[] = [];
  for (const pointer of pointers) {
    const path = pointer.slice(1).split("/").map((part) => part.replace(/~1/g, "/").replace(/~0/g, "~"));
    let node: Json = redacted.properties ?? null;
    for (const key of path.slice(0, -1)) node = node !== null && typeof node === "object" ? ((node as Record<string, Json>)[key] ?? null) : null;
    const last = path[path.length - 1]!;
    if (node !== null && typeof node === "object" && Object.hasOwn(node, last)) (node as Record<string, Json>)[last] = REDACTED;
    else unmatched.push(pointer);
  }
  return { redacted, unmatched };
}

/** JSON with every object's keys sorted: the same document always gives the same bytes. */
export function canonicalJson(value: Json): string {
  return JSON.stringify(value, (_key, node: Json) =>
    node !== null && typeof node === "object" && !Array.isArray(node)
      ? Object.fromEntries(Object.keys(node).sort().map((key) => [key, node[key]!]))
      : node,
  );
}

/** step_context.json.zip: one entry, fixed time and level, so equal documents give equal zips. */
export function zipStepContext(document: JsonObject): Buffer {
  const json = Buffer.from(canonicalJson(document));
  return Buffer.from(zipSync({ "step_context.json": [json, { mtime: ZIP_TIME, level: 6 }] }));
}
