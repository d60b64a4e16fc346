import { parseArgs } from "node:util";
import type { Command } from "./command.js";

interface CommandEntry {
  summary: string;
  /** Imports the command's module: only the command that runs pays for its gRPC and protobuf modules. */
  load(): Promise<Command>;
}

const commands: Record<string, CommandEntry> = {
  status: {
    summary: "show the health of each service, BuildKit's workers, the registry and runc",
    load: async () => (await import("./status.js")).statusCommand,
  },
  context: {
    summary: "prepare a step's build context (repo.tar, step_context.json.zip, Dockerfile) into a directory",
    load: async () => (await import("./context.js")).contextCommand,
  },
  build: {
    summary: "build (or reuse) the runner image of a revision, showing live progress",
    load: async () => (await import("./build.js")).buildCommand,
  },
  run: {
    summary: "run a step: stream its progress and logs, print its result, exit with its exit status",
    load: async () => (await import("./step.js")).runCommand,
  },
  logs: {
    summary: "print a step's log, from an offset, and with --follow until the step ends",
    load: async () => (await import("./step.js")).logsCommand,
  },
  cancel: {
    summary: "cancel a step (a step that has ended stays as it is)",
    load: async () => (await import("./step.js")).cancelCommand,
  },
  continue: {
    summary: "continue a change's waiting wait or input step (with --input values for an input step)",
    load: async () => (await import("./change.js")).continueCommand,
  },
  change: {
    summary: "show a change's tree: live while it runs, as it ended once finished",
    load: async () => (await import("./change.js")).changeCommand,
  },
};

function programHelp(): string {
  const lines = ["steprunner: run each step of a change in its own fresh container", "", "Usage: steprunner <command> [options]", "", "Commands:"];
  for (const [name, command] of Object.entries(commands)) lines.push(`  ${name.padEnd(10)} ${command.summary}`);
  lines.push("", "Run `steprunner <command> --help` for a command's options.");
  return lines.join("\n");
}

function commandHelp(name: string, summary: string, command: Command): string {
  const lines = [summary, "", `Usage: steprunner ${name} ${command.usage}`, "", "Options:"];
  for (const [option, spec] of Object.entries(command.options)) {
    const flag = spec.type === "string" ? `--${option} VALUE` : `--${option}`;
    const fallback = spec.default !== undefined ? ` (default: ${spec.default})` : "";
    lines.push(`  ${flag.padEnd(24)} ${spec.description}${fallback}`);
  }
  lines.push(`  ${"--help".padEnd(24)} show this help`);
  return lines.join("\n");
}

/** Runs the command argv names; returns the process exit code. */
export async function runProgram(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    console.log(programHelp());
    return name === undefined ? 2 : 0;
  }
  const entry = commands[name];
  if (!entry) {
    console.error(`steprunner: unknown command "${name}"\n\n${programHelp()}`);
    return 2;
  }
  const command = await entry.load();
  const options = Object.fromEntries(
    Object.entries(command.options).map(([option, spec]) => [option, { type: spec.type, default: spec.default, ...(spec.multiple ? { multiple: true } : {}) }]),
  );
  const parse = () => parseArgs({ args: rest, options: { ...options, help: { type: "boolean", short: "h" } }, allowPositionals: command.positionals === true });
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse();
  } catch (error) {
    console.error(`steprunner ${name}: ${(error as Error).message}\n\n${commandHelp(name, entry.summary, command)}`);
    return 2;
  }
  if (parsed.values.help) {
    console.log(commandHelp(name, entry.summary, command));
    return 0;
  }
  return command.run(parsed.values as Record<string, string | boolean | string[] | undefined>, parsed.positionals);
}

/** Whether name is one of the commands (the launcher keeps a code cache per command, and none for typos). */
export function isCommand(name: string | undefined): boolean {
  return name !== undefined && Object.hasOwn(commands, name);
}
