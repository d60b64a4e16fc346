#!/usr/bin/env node
// The CLI unbundled (node dist/services/cli/main.js); the bundle's launcher runs the same program.
import { runProgram } from "./program.js";

process.exitCode = await runProgram(process.argv.slice(2));
