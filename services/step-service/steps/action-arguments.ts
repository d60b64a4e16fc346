/**
 * What RunStep's `action` may say, and the arguments it becomes for `opschain-action` (which hands them to
 * Rake): what `opschain-action` accepts, and nothing that could make Rake do something else.
 *
 * - One or more task names separated by spaces: `deploy`, `build test`, `ns:task`. A task name is 1-255 of
 *   letters, digits, '_', ':', '.' and '-', not starting with '-' (so never an option) and without '=' (Rake
 *   would take `NAME=value` as an environment setting) or '[' (task arguments).
 * - A listing: `-T` (described tasks) or `-AT` (all tasks; `-TA`, `-A -T` and `-T -A` mean the same),
 *   optionally followed by one pattern that filters the list (a task-name-like word).
 *
 * Every other option (`--require`, `-e`, `-f`, `--rakefile`, `-I`, `-P`, `--trace`…) is refused: each could
 * load or run code other than actions.rb's tasks, or read another file.
 */

const TASK = /^[A-Za-z0-9_][A-Za-z0-9_:.-]{0,254}$/;
/** The options a listing may use, and what each stands for. */
const LISTING_OPTIONS: Record<string, readonly ("A" | "T")[]> = {
  "-T": ["T"],
  "-AT": ["A", "T"],
  "-TA": ["A", "T"],
  "-A": ["A"],
};
export const MAX_ACTION_LENGTH = 4096;
export const MAX_ACTION_WORDS = 64;

export type ParsedAction = { kind: "tasks"; tasks: string[] } | { kind: "listing"; all: boolean; pattern?: string };

export class ActionRuleError extends Error {}

export const ACTION_RULE =
  "must be what opschain-action accepts: one or more Rake tasks of actions.rb separated by spaces (each 1-255 letters, digits, '_', ':', '.' or '-', not starting with '-', e.g. \"deploy\" or \"build ns:test\"), or \"-T\" / \"-AT\" to list them (optionally followed by a pattern)";

/** Parses RunStep's action; throws ActionRuleError saying what is wrong. */
export function parseAction(action: string): ParsedAction {
  if (action.length > MAX_ACTION_LENGTH) throw new ActionRuleError(`${ACTION_RULE}; at most ${MAX_ACTION_LENGTH} characters`);
  const words = action.split(/[ \t]+/).filter((word) => word !== "");
  if (words.length === 0) throw new ActionRuleError(ACTION_RULE);
  if (/[\r\n\0]/.test(action)) throw new ActionRuleError(`${ACTION_RULE}; without line breaks or NUL`);
  if (words.length > MAX_ACTION_WORDS) throw new ActionRuleError(`${ACTION_RULE}; at most ${MAX_ACTION_WORDS} words`);
  const options = words.filter((word) => word.startsWith("-"));
  if (options.length === 0) {
    const bad = words.find((word) => !TASK.test(word));
    if (bad !== undefined) throw new ActionRuleError(`${ACTION_RULE}; "${bad}" is not a task name`);
    return { kind: "tasks", tasks: words };
  }
  const unknown = options.find((option) => !(option in LISTING_OPTIONS));
  if (unknown !== undefined) {
    throw new ActionRuleError(
      `${ACTION_RULE}; the option "${unknown}" is refused (only -T and -AT are allowed, since other Rake options could load or run other code)`,
    );
  }
  const flags = new Set(options.flatMap((option) => LISTING_OPTIONS[option]!));
  if (!flags.has("T")) throw new ActionRuleError(`${ACTION_RULE}; -A lists nothing without -T (use -AT)`);
  const rest = words.filter((word) => !word.startsWith("-"));
  if (rest.length > 1)
    throw new ActionRuleError(`${ACTION_RULE}; a listing takes at most one pattern, not tasks to run (got ${rest.map((word) => `"${word}"`).join(", ")})`);
  if (rest.length === 1 && !TASK.test(rest[0]!)) throw new ActionRuleError(`${ACTION_RULE}; the pattern "${rest[0]}" must be a task-name-like word`);
  // The options come first so that Rake reads the pattern as -T's argument.
  return { kind: "listing", all: flags.has("A"), ...(rest.length === 1 ? { pattern: rest[0]! } : {}) };
}

/** The arguments of `opschain-action` for a valid action. */
export function actionArguments(action: string): string[] {
  const parsed = parseAction(action);
  if (parsed.kind === "tasks") return parsed.tasks;
  return [parsed.all ? "-AT" : "-T", ...(parsed.pattern !== undefined ? [parsed.pattern] : [])];
}

export const NAMED_ACTION_RULE =
  "must be one action of actions.rb by name or step name, spaces allowed (\"Hello world action\"): 1-255 characters without control characters, '=' or '[', not starting with '-' or a space";

/**
 * Checks one element of RunStep's `actions` (or a declared child step), which opschain-action gets as one
 * argument: a name may hold spaces, but never be read by Rake as an option, `NAME=value` or `task[args]`.
 */
export function checkNamedAction(name: string): void {
  const problem =
    name.length === 0 || name.length > 255
      ? `${NAMED_ACTION_RULE}; got ${name.length} characters`
      : name.startsWith("-")
        ? `${NAMED_ACTION_RULE}; it starts with '-', so Rake would read it as an option`
        : /^\s|\s$/.test(name)
          ? `${NAMED_ACTION_RULE}; it starts or ends with a space`
          : /[\p{Cc}=[]/u.test(name)
            ? `${NAMED_ACTION_RULE}; it holds ${JSON.stringify(name.match(/[\p{Cc}=[]/u)![0])}`
            : undefined;
  if (problem) throw new ActionRuleError(problem);
}

/** The action as one canonical string (words separated by one space), e.g. for context.change.action. */
export function normalisedAction(action: string): string {
  return actionArguments(action).join(" ");
}
