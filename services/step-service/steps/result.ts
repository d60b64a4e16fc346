import { checkInputArgument, INPUT_TYPES, type InputArgument } from "./input-values.js";

/** What a child step is: an action run in a container, or a built-in step the change runner carries out. */
export type StepKind = "action" | "group" | "wait" | "input";

/** A child step as step_result.json declares it (the runner library's child_step_definitions). */
export interface ChildDefinition {
  action: string;
  stepName: string;
  kind: StepKind;
  /** Failures of this step and those under it do not fail its parent nor the change. */
  ignoreFailure: boolean;
  /** A built-in step's own children; an action declares its children when it runs. */
  children: ChildDefinition[];
  childExecutionStrategy: "sequential" | "parallel";
  /** A timed wait: it continues by itself after this many seconds; 0 waits for ContinueChange. */
  waitSeconds: number;
  inputArguments: InputArgument[];
}

/** Bounds on a declared tree, so that one step_result.json cannot make the change runner do unbounded work. */
export const MAX_DECLARED_CHILDREN = 1000;
export const MAX_DECLARED_DEPTH = 32;
const KINDS: Record<string, StepKind> = { action: "action", group: "group", wait: "wait", input: "input" };

/** The validated content of a step's step_result.json. */
export interface StepResultData {
  properties: Record<string, unknown>;
  propertiesDiffs: { owner: string; operations: Record<string, unknown>[] }[];
  children: ChildDefinition[];
  childExecutionStrategy: "sequential" | "parallel";
  /** A dry run's expected_step_tree, any JSON; absent when the step reported none (or null). */
  expectedStepTree?: unknown;
}

export class InvalidResultError extends Error {}

const OPS = new Set(["add", "remove", "replace", "move", "copy", "test"]);

/** Parses and checks step_result.json (compatibility.md's shape); says what is wrong when it is not valid. */
export function parseStepResult(text: string): StepResultData {
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch (error) {
    throw new InvalidResultError(`step_result.json is not JSON: ${(error as Error).message}`);
  }
  if (!isObject(document)) throw new InvalidResultError("step_result.json must be a JSON object");
  const step = document.step ?? {};
  if (!isObject(step)) throw new InvalidResultError("step must be an object");
  const properties = step.properties ?? {};
  if (!isObject(properties)) throw new InvalidResultError("step.properties must be an object");

  const diffs = document.properties_diffs ?? {};
  if (!isObject(diffs)) throw new InvalidResultError("properties_diffs must be an object of owner → RFC 6902 operations");
  const propertiesDiffs = Object.entries(diffs).map(([owner, operations]) => {
    if (!Array.isArray(operations)) throw new InvalidResultError(`properties_diffs.${owner} must be an array of operations`);
    operations.forEach((operation, index) => checkOperation(operation, `properties_diffs.${owner}[${index}]`));
    return { owner, operations: operations as Record<string, unknown>[] };
  });

  const definitions = document.child_step_definitions ?? {};
  if (!isObject(definitions)) throw new InvalidResultError("child_step_definitions must be an object");
  const count = { children: 0 };
  const children = parseChildren(definitions.children, "child_step_definitions.children", 1, count);
  const strategy = parseStrategy(definitions.child_execution_strategy, "child_step_definitions.child_execution_strategy");
  return {
    properties,
    propertiesDiffs,
    children,
    childExecutionStrategy: strategy,
    ...(document.expected_step_tree !== undefined && document.expected_step_tree !== null ? { expectedStepTree: document.expected_step_tree } : {}),
  };
}

function parseChildren(value: unknown, where: string, depth: number, count: { children: number }): ChildDefinition[] {
  const children = value ?? [];
  if (!Array.isArray(children)) throw new InvalidResultError(`${where} must be an array`);
  if (depth > MAX_DECLARED_DEPTH) throw new InvalidResultError(`${where}: child steps may nest at most ${MAX_DECLARED_DEPTH} deep`);
  count.children += children.length;
  if (count.children > MAX_DECLARED_CHILDREN)
    throw new InvalidResultError(`child_step_definitions: a step may declare at most ${MAX_DECLARED_CHILDREN} child steps in all`);
  return children.map((child, index) => parseChild(child, `${where}[${index}]`, depth, count));
}

function parseChild(child: unknown, where: string, depth: number, count: { children: number }): ChildDefinition {
  if (!isObject(child) || typeof child.action !== "string" || child.action === "") {
    throw new InvalidResultError(`${where} must be an object with a non-empty "action"`);
  }
  const kind = KINDS[String(child.type ?? "action")];
  if (!kind) throw new InvalidResultError(`${where}.type must be one of ${Object.keys(KINDS).join(", ")}, not ${JSON.stringify(child.type)}`);
  if (child.step_name !== undefined && typeof child.step_name !== "string") throw new InvalidResultError(`${where}.step_name must be a string`);
  if (child.ignore_failure !== undefined && typeof child.ignore_failure !== "boolean")
    throw new InvalidResultError(`${where}.ignore_failure must be true or false`);
  if (kind === "action" && Array.isArray(child.children) && child.children.length > 0) {
    throw new InvalidResultError(`${where}.children: only built-in steps (group, wait, input) declare children here; an action declares its own when it runs`);
  }
  const waitSeconds = child.wait_seconds ?? 0;
  if (kind === "wait" ? !(Number.isInteger(waitSeconds) && (waitSeconds as number) >= 0 && (waitSeconds as number) <= 86_400) : waitSeconds !== 0) {
    throw new InvalidResultError(`${where}.wait_seconds must be a whole number of seconds up to 86400, on a wait step only`);
  }
  const inputArguments = kind === "input" ? parseInputArguments(child.input_arguments, `${where}.input_arguments`) : [];
  return {
    action: child.action,
    stepName: (child.step_name as string | undefined) ?? "",
    kind,
    ignoreFailure: child.ignore_failure === true,
    children: kind === "action" ? [] : parseChildren(child.children, `${where}.children`, depth + 1, count),
    childExecutionStrategy: parseStrategy(child.child_execution_strategy, `${where}.child_execution_strategy`),
    waitSeconds: waitSeconds as number,
    inputArguments,
  };
}

function parseInputArguments(value: unknown, where: string): InputArgument[] {
  if (!Array.isArray(value) || value.length === 0) throw new InvalidResultError(`${where} must be a non-empty array`);
  const names = new Set<string>();
  return value.map((item, index) => {
    const at = `${where}[${index}]`;
    if (!isObject(item)) throw new InvalidResultError(`${at} must be an object`);
    const text = (key: string, fallback: string): string => {
      const field = item[key] ?? fallback;
      if (typeof field !== "string") throw new InvalidResultError(`${at}.${key} must be a string`);
      return field;
    };
    const argument: InputArgument = {
      name: text("name", ""),
      path: text("path", "/"),
      guiName: text("gui_name", String(item.name ?? "")),
      description: text("description", ""),
      required: item.required !== false,
      type: text("type", "string") as InputArgument["type"],
      ...("default_value" in item && item.default_value !== null ? { defaultValue: item.default_value } : {}),
      validValues: Array.isArray(item.valid_values) ? item.valid_values : [],
      overwrite: item.overwrite === true,
    };
    if (!INPUT_TYPES.includes(argument.type)) throw new InvalidResultError(`${at}.type must be one of ${INPUT_TYPES.join(", ")}`);
    const problem = checkInputArgument(argument);
    if (problem) throw new InvalidResultError(`${at}: ${problem}`);
    if (names.has(argument.name)) throw new InvalidResultError(`${at}: the input argument ${argument.name} is declared twice`);
    names.add(argument.name);
    return argument;
  });
}

function parseStrategy(value: unknown, where: string): "sequential" | "parallel" {
  const strategy = value ?? "sequential";
  if (strategy !== "sequential" && strategy !== "parallel")
    throw new InvalidResultError(`${where} must be "sequential" or "parallel", not ${JSON.stringify(strategy)}`);
  return strategy;
}

function checkOperation(operation: unknown, where: string): void {
  if (!isObject(operation)) throw new InvalidResultError(`${where} must be an object`);
  if (typeof operation.op !== "string" || !OPS.has(operation.op)) throw new InvalidResultError(`${where}.op must be one of ${[...OPS].join(", ")}`);
  if (typeof operation.path !== "string" || (operation.path !== "" && !operation.path.startsWith("/"))) {
    throw new InvalidResultError(`${where}.path must be a JSON pointer ("" or starting with "/")`);
  }
  if (["add", "replace", "test"].includes(operation.op) && !("value" in operation)) throw new InvalidResultError(`${where} (${operation.op}) needs a value`);
  if (["move", "copy"].includes(operation.op) && typeof operation.from !== "string") throw new InvalidResultError(`${where} (${operation.op}) needs "from"`);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
