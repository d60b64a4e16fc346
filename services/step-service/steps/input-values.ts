import type { PropertySet } from "./ports.js";

/**
 * The input arguments of an input step (OpsChain's input_step) and the values a caller supplies for them:
 * converted to each argument's type by the same rules the runner library applies to defaults and valid values
 * while actions.rb loads (deploy/runner/lib/opschain/builtin_steps.rb), then written into the change's
 * properties at the argument's path, under its name.
 */

export const INPUT_TYPES = ["string", "boolean", "date", "float", "integer", "array", "hash"] as const;
export type InputType = (typeof INPUT_TYPES)[number];

export interface InputArgument {
  name: string;
  /** A JSON pointer to an object of the change's properties; the value goes under the argument's name. */
  path: string;
  guiName: string;
  description: string;
  required: boolean;
  type: InputType;
  defaultValue?: unknown;
  validValues: unknown[];
  /** Replace a value the merged properties already have there; otherwise that value is kept. */
  overwrite: boolean;
}

/** The owner input values are written to (OpsChain's change override properties). */
export const INPUT_OWNER = "change";

export class InputValueError extends Error {
  constructor(
    /** The argument the value was for. */
    readonly argument: string,
    message: string,
  ) {
    super(message);
  }
}

const TRUE_WORDS = new Set(["true", "yes", "y", "on", "1"]);
const FALSE_WORDS = new Set(["false", "no", "n", "off", "0"]);

/** The value as the type, or undefined when that would lose information (1.5 as an integer, "maybe" as a boolean). */
export function convertInput(type: InputType, value: unknown): unknown {
  switch (type) {
    case "string":
      return typeof value === "string" || typeof value === "number" || typeof value === "boolean" ? String(value) : undefined;
    case "integer":
      if (typeof value === "number") return Number.isSafeInteger(value) ? value : undefined;
      return typeof value === "string" && /^[+-]?\d+$/.test(value.trim()) && Number.isSafeInteger(Number(value)) ? Number(value) : undefined;
    case "float":
      if (typeof value === "number") return value;
      return typeof value === "string" && /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(value.trim()) ? Number(value) : undefined;
    case "boolean": {
      if (typeof value === "boolean") return value;
      const word = String(value).trim().toLowerCase();
      return TRUE_WORDS.has(word) ? true : FALSE_WORDS.has(word) ? false : undefined;
    }
    case "date":
      return typeof value === "string" && isDate(value) ? value : undefined;
    case "array":
      return parsedJson(value, Array.isArray);
    case "hash":
      return parsedJson(value, (parsed) => typeof parsed === "object" && parsed !== null && !Array.isArray(parsed));
  }
}

/** What is wrong with an argument as declared, or undefined. */
export function checkInputArgument(argument: InputArgument): string | undefined {
  if (argument.name === "" || argument.name.includes("/")) return "an input argument needs a name without /";
  if (!argument.path.startsWith("/")) return `input argument ${argument.name}: path must be a JSON pointer starting with /`;
  if (argument.defaultValue !== undefined && convertInput(argument.type, argument.defaultValue) === undefined) {
    return `input argument ${argument.name}: default_value ${JSON.stringify(argument.defaultValue)} is not a ${argument.type}`;
  }
  const invalid = argument.validValues.find((value) => convertInput(argument.type, value) === undefined);
  if (invalid !== undefined) return `input argument ${argument.name}: valid value ${JSON.stringify(invalid)} is not a ${argument.type}`;
  return undefined;
}

/**
 * The supplied values checked against the arguments and converted: every name known, required ones given (or
 * defaulted), each a value of its type and one of its valid values. Throws InputValueError naming the argument.
 */
export function resolveInputs(inputArguments: InputArgument[], supplied: Record<string, unknown>): Record<string, unknown> {
  const known = new Map(inputArguments.map((argument) => [argument.name, argument]));
  const unknown = Object.keys(supplied).find((name) => !known.has(name));
  if (unknown !== undefined) {
    throw new InputValueError(unknown, `this input step has no argument ${unknown} (its arguments: ${[...known.keys()].join(", ")})`);
  }
  const values: Record<string, unknown> = {};
  for (const argument of inputArguments) {
    const given = supplied[argument.name];
    if (given === undefined || given === null || given === "") {
      if (argument.defaultValue !== undefined) values[argument.name] = convertInput(argument.type, argument.defaultValue);
      else if (argument.required) throw new InputValueError(argument.name, `${describe(argument)} is required`);
      continue;
    }
    const converted = convertInput(argument.type, given);
    if (converted === undefined) throw new InputValueError(argument.name, `${describe(argument)} must be a ${argument.type}, got ${JSON.stringify(given)}`);
    const choices = argument.validValues.map((value) => convertInput(argument.type, value));
    if (choices.length > 0 && !choices.some((choice) => JSON.stringify(choice) === JSON.stringify(converted))) {
      throw new InputValueError(
        argument.name,
        `${describe(argument)} must be one of ${choices.map((choice) => JSON.stringify(choice)).join(", ")}, got ${JSON.stringify(given)}`,
      );
    }
    values[argument.name] = converted;
  }
  return values;
}

/**
 * The RFC 6902 operations that write the values into the change's properties, each at its argument's path
 * under its name, making the objects on the way. A value the merged properties already have there is kept
 * unless the argument says overwrite; `kept` names those arguments.
 */
export function inputOperations(
  inputArguments: InputArgument[],
  values: Record<string, unknown>,
  properties: PropertySet[],
): { operations: Record<string, unknown>[]; kept: string[] } {
  const merged = properties.reduce<Record<string, unknown>>((all, set) => deepMerge(all, set.properties), {});
  const change = structuredClone(properties.find((set) => set.owner === INPUT_OWNER)?.properties ?? {});
  const operations: Record<string, unknown>[] = [];
  const kept: string[] = [];
  for (const argument of inputArguments) {
    if (!(argument.name in values)) continue;
    const segments = [...pointerSegments(argument.path), argument.name];
    if (!argument.overwrite && lookup(merged, segments) !== undefined) {
      kept.push(argument.name);
      continue;
    }
    let node: Record<string, unknown> = change;
    let pointer = "";
    for (const [index, segment] of segments.entries()) {
      pointer += `/${segment.replaceAll("~", "~0").replaceAll("/", "~1")}`;
      const last = index === segments.length - 1;
      const next = node[segment];
      if (last || next === undefined) {
        const value = segments.slice(index + 1).reduceRight<unknown>((inner, key) => ({ [key]: inner }), values[argument.name]);
        operations.push({ op: "add", path: pointer, value });
        node[segment] = structuredClone(value);
        break;
      }
      if (typeof next !== "object" || next === null || Array.isArray(next)) {
        throw new InputValueError(
          argument.name,
          `input argument ${argument.name}: the change property ${pointer} is not an object, so ${argument.path} cannot hold it`,
        );
      }
      node = next as Record<string, unknown>;
    }
  }
  return { operations, kept };
}

function describe(argument: InputArgument): string {
  return argument.guiName && argument.guiName !== argument.name ? `${argument.name} (${argument.guiName})` : argument.name;
}

function isDate(text: string): boolean {
  const match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(text);
  if (!match) return false;
  const date = new Date(Date.UTC(Number(match[1]), Number(match[2]) - 1, Number(match[3])));
  return date.toISOString().startsWith(text);
}

function parsedJson(value: unknown, accept: (parsed: unknown) => boolean): unknown {
  let parsed = value;
  if (typeof value === "string") {
    try {
      parsed = JSON.parse(value);
    } catch {
      return undefined;
    }
  }
  return accept(parsed) ? parsed : undefined;
}

function pointerSegments(pointer: string): string[] {
  if (pointer === "/") return [];
  return pointer
    .slice(1)
    .split("/")
    .map((segment) => segment.replaceAll("~1", "/").replaceAll("~0", "~"));
}

function lookup(value: unknown, segments: string[]): unknown {
  let current = value;
  for (const segment of segments) {
    if (typeof current !== "object" || current === null || Array.isArray(current)) return undefined;
    current = (current as Record<string, unknown>)[segment];
  }
  return current;
}

function deepMerge(left: Record<string, unknown>, right: Record<string, unknown>): Record<string, unknown> {
  const merged = { ...left };
  for (const [key, value] of Object.entries(right)) {
    const before = merged[key];
    const bothObjects = [before, value].every((item) => typeof item === "object" && item !== null && !Array.isArray(item));
    merged[key] = bothObjects ? deepMerge(before as Record<string, unknown>, value as Record<string, unknown>) : value;
  }
  return merged;
}
