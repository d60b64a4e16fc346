/** The validated content of a step's step_result.json. */
export interface StepResultData {
  properties: Record<string, unknown>;
  propertiesDiffs: { owner: string; operations: Record<string, unknown>[] }[];
  children: { action: string }[];
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
  const children = definitions.children ?? [];
  if (!Array.isArray(children)) throw new InvalidResultError("child_step_definitions.children must be an array");
  children.forEach((child, index) => {
    if (!isObject(child) || typeof child.action !== "string" || child.action === "") {
      throw new InvalidResultError(`child_step_definitions.children[${index}] must be an object with a non-empty "action"`);
    }
  });
  const strategy = definitions.child_execution_strategy ?? "sequential";
  if (strategy !== "sequential" && strategy !== "parallel") {
    throw new InvalidResultError(`child_step_definitions.child_execution_strategy must be "sequential" or "parallel", not ${JSON.stringify(strategy)}`);
  }
  return {
    properties,
    propertiesDiffs,
    children: (children as { action: string }[]).map((child) => ({ action: child.action })),
    childExecutionStrategy: strategy,
    ...(document.expected_step_tree !== undefined && document.expected_step_tree !== null ? { expectedStepTree: document.expected_step_tree } : {}),
  };
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
