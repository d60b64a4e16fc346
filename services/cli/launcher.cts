#!/usr/bin/env node
// The `steprunner` command as bundled: runs the program bundle beside it (steprunner-program.cjs) through a V8
// code cache, so that a command compiles none of the functions it compiled the last time it ran: about 20 ms of
// every command's start. Node 20 keeps no compile cache for user code (module.enableCompileCache is Node 22's).
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { Script } from "node:vm";

interface Program {
  runProgram(argv: string[]): Promise<number>;
  isCommand(name: string | undefined): boolean;
}

const programPath = join(__dirname, "steprunner-program.cjs");
const cacheDir = join(__dirname, ".code-cache");
const argv = process.argv.slice(2);
const commandName = argv[0] ?? "";
// One cache per command (a command's run compiles its own functions) and per build of the program: V8 checks a
// cache against the source's length only, so a rebuilt bundle of the same length must not find the old one.
const program = statSync(programPath);
const cacheKey = `${/^[a-z]+$/.test(commandName) ? commandName : "help"}-`;
const cachePath = join(cacheDir, `${cacheKey}${process.version}-${program.size}-${Math.trunc(program.mtimeMs)}.bin`);

let cachedData: Buffer | undefined;
try {
  cachedData = readFileSync(cachePath);
} catch {
  // first run of this command (or an unwritable install): compiled as usual
}
// Wrapped on the program's first line, so that stack traces keep its line numbers.
const script = new Script(`(function (exports, require, module, __filename, __dirname) {${readFileSync(programPath, "utf8")}\n})`, {
  filename: programPath,
  cachedData,
});
const loaded = { exports: {} as Program };
script.runInThisContext()(loaded.exports, createRequire(programPath), loaded, programPath, __dirname);
const { runProgram, isCommand } = loaded.exports;

runProgram(argv).then((code) => {
  process.exitCode = code;
  const wanted = cachedData === undefined || script.cachedDataRejected === true;
  const fullRun = (isCommand(commandName) && !argv.includes("--help") && !argv.includes("-h")) || cacheKey === "help-";
  if (wanted && fullRun) keepCodeCache(script.createCachedData());
});

/** Writes the cache atomically (two commands may finish at once) and drops this command's older ones. */
function keepCodeCache(data: Buffer): void {
  try {
    mkdirSync(cacheDir, { recursive: true });
    for (const name of readdirSync(cacheDir)) if (name.startsWith(cacheKey)) rmSync(join(cacheDir, name), { force: true });
    const partial = `${cachePath}.${process.pid}`;
    writeFileSync(partial, data);
    renameSync(partial, cachePath);
  } catch {
    // an install this user cannot write to runs without a cache
  }
}
