#!/usr/bin/env node
import { parseArgs } from "node:util";
import type { Command } from "./command.js";
import { buildCommand } from "./build.js";
import { contextCommand } from "./context.js";
import { statusCommand } from "./status.js";
import { cancelCommand, logsCommand, runCommand } from "./step.js";

const commands: Record<string, Command> = {
  status: statusCommand,
  context: contextCommand,
  build: buildCommand,
  run: runCommand,
  logs: logsCommand,
  cancel: cancelCommand,
};

function programHelp(): string {
  const lines = ["steprunner: run each step of a change in its own fresh container", "", "Usage: steprunner <command> [options]", "", "Commands:"];
  for (const [name, command] of Object.entries(commands)) lines.push(`  ${name.padEnd(10)} ${command.summary}`);
  lines.push("", "Run `steprunner <command> --help` for a command's options.");
  return lines.join("\n");
}

function commandHelp(name: string, command: Command): string {
  const lines = [command.summary, "", `Usage: steprunner ${name} ${command.usage}`, "", "Options:"];
  for (const [option, spec] of Object.entries(command.options)) {
    const flag = spec.type === "string" ? `--${option} VALUE` : `--${option}`;
    const fallback = spec.default !== undefined ? ` (default: ${spec.default})` : "";
    lines.push(`  ${flag.padEnd(24)} ${spec.description}${fallback}`);
  }
  lines.push(`  ${"--help".padEnd(24)} show this help`);
  return lines.join("\n");
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    console.log(programHelp());
    return name === undefined ? 2 : 0;
  }
  const command = commands[name];
  if (!command) {
    console.error(`steprunner: unknown command "${name}"\n\n${programHelp()}`);
    return 2;
  }
  const options = Object.fromEntries(
    Object.entries(command.options).map(([option, spec]) => [option, { type: spec.type, default: spec.default, ...(spec.multiple ? { multiple: true } : {}) }]),
  );
  let parsed;
  try {
    parsed = parseArgs({ args: rest, options: { ...options, help: { type: "boolean", short: "h" } }, allowPositionals: command.positionals === true });
  } catch (error) {
    console.error(`steprunner ${name}: ${(error as Error).message}\n\n${commandHelp(name, command)}`);
    return 2;
  }
  if (parsed.values.help) {
    console.log(commandHelp(name, command));
    return 0;
  }
  return command.run(parsed.values as Record<string, string | boolean | string[] | undefined>, parsed.positionals);
}

process.exitCode = await main(process.argv.slice(2));
