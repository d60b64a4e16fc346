import { zipSync } from "fflate";
import { MAX_OWNERS, MAX_SECRET_POINTERS, ownerRule, secretPointerRule } from "../../shared/request-rules.js";
import { invalidField } from "./errors.js";
import { parseJsonPointer } from "../../shared/json-pointer.js";

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

export interface PropertySetInput {
  owner: string;
  properties: JsonObject;
}

/** context.change, context.step, context.user and context.parents of step_context.json, as OpsChain's users read them. */
export interface StepContextValues {
  change: Record<string, Json>;
  step: Record<string, Json>;
  user: Record<string, Json>;
  /** By type: project, environment, asset (only those the step runs under). */
  parents?: Record<string, Json>;
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

/** Checks the properties (owners, sizes, opschain.env) and the secret pointers before anything is written. */
export function checkStepContextInput(input: StepContextInput, secretPointers: string[], limits: StepContextLimits): void {
  if (input.properties.length > MAX_OWNERS) throw invalidField("properties", `must have at most ${MAX_OWNERS} owners`, input.properties.length);
  const seen = new Set<string>();
  let bytes = 0;
  for (const [position, set] of input.properties.entries()) {
    const field = `properties[${position}]`;
    const ownerProblem = ownerRule(set.owner);
    if (ownerProblem) throw invalidField(`${field}.owner`, ownerProblem, set.owner);
    if (seen.has(set.owner)) throw invalidField(`${field}.owner`, "must differ from the owners before it", set.owner);
    seen.add(set.owner);
    if (set.properties === null || typeof set.properties !== "object" || Array.isArray(set.properties)) {
      throw invalidField(`${field}.properties`, "must be a JSON object");
    }
    bytes += Buffer.byteLength(JSON.stringify(set.properties));
    const opschain = set.properties.opschain;
    const env = opschain && typeof opschain === "object" && !Array.isArray(opschain) ? opschain.env : undefined;
    if (env !== undefined) {
      if (env === null || typeof env !== "object" || Array.isArray(env))
        throw invalidField(`${field}.properties.opschain.env`, "must be an object of NAME: value");
      for (const [name, value] of Object.entries(env)) {
        if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name))
          throw invalidField(`${field}.properties.opschain.env`, "must have environment variable names ([A-Za-z_][A-Za-z0-9_]*) as keys", name);
        if (value !== null && typeof value === "object") throw invalidField(`${field}.properties.opschain.env.${name}`, "must be a string, number or boolean");
      }
    }
  }
  if (bytes > limits.maxPropertiesBytes)
    throw invalidField("properties", `must be at most ${limits.maxPropertiesBytes} bytes of JSON in all`, `${bytes} bytes`);
  if (secretPointers.length > MAX_SECRET_POINTERS)
    throw invalidField("secret_pointers", `must have at most ${MAX_SECRET_POINTERS} pointers`, secretPointers.length);
  for (const [position, pointer] of secretPointers.entries()) {
    const rule = secretPointerRule(pointer);
    if (rule) throw invalidField(`secret_pointers[${position}]`, rule, pointer);
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
      parents: input.values.parents ?? {},
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
    const path = parseJsonPointer(pointer);
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
      ? Object.fromEntries(
          Object.keys(node)
            .sort()
            .map((key) => [key, node[key]!]),
        )
      : node,
  );
}

/** step_context.json.zip: one entry, fixed time and level, so equal documents give equal zips. */
export function zipStepContext(document: JsonObject): Buffer {
  const json = Buffer.from(canonicalJson(document));
  return Buffer.from(zipSync({ "step_context.json": [json, { mtime: ZIP_TIME, level: 6 }] }));
}
