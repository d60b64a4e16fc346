// The fault-injection suite against a running local stack (deploy/local/env.sh settings): npm run faults -- --per-kind N
// Faults restart services, the BuildKit daemon and the registry: run it against a stack of its own, never a shared one.
import { writeFile } from "node:fs/promises";
import { cpus, hostname, totalmem } from "node:os";
import { parseArgs } from "node:util";
import { ROOT } from "../support/stack.js";
import { FAULT_KINDS, type FaultKind, FaultSuite, type KindResult } from "./suite.js";
import { FaultStack } from "./stack.js";

const { values } = parseArgs({
  options: {
    "per-kind": { type: "string", default: "10" },
    "slow-per-kind": { type: "string" },
    kinds: { type: "string" },
    out: { type: "string", default: `${ROOT}fault-results.md` },
  },
});
const perKind = Number(values["per-kind"]);
const slowPerKind = values["slow-per-kind"] ? Number(values["slow-per-kind"]) : perKind;
const kinds = values.kinds ? (values.kinds.split(",").map((name) => name.trim()) as FaultKind[]) : FAULT_KINDS;
for (const kind of kinds) if (!FAULT_KINDS.includes(kind)) throw new Error(`unknown fault kind "${kind}"; kinds: ${FAULT_KINDS.join(", ")}`);

const stack = new FaultStack();
const began = new Date();
const suite = new FaultSuite(stack, { perKind, slowPerKind, kinds, log: (message) => console.error(`[faults] ${message}`) });
let results: KindResult[];
try {
  results = await suite.run();
} finally {
  stack.close();
}

const total = (pick: (result: KindResult) => number) => results.reduce((sum, result) => sum + pick(result), 0);
const rows = results.map(
  (result) =>
    `| ${result.kind} | ${result.injected} | ${result.steps} | ${result.leaks.length} | ${result.lost.length} | ${result.bad.length} | ${result.seconds.toFixed(0)} |`,
);
const details = results.flatMap((result) => [...result.leaks, ...result.lost.map((id) => `lost record ${id}`), ...result.bad]);
const table = `# Fault-injection results

\`npm run faults -- --per-kind ${perKind} --slow-per-kind ${slowPerKind}\` on ${hostname()} (${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}),
started ${began.toISOString()}, took ${((Date.now() - began.getTime()) / 60_000).toFixed(1)} min, against a stack of its own
(state in \`${stack.stateDir}\`, registry ${stack.registry}, step-service ${stack.stepAddr}).

After every fault the suite waits for the step-service to be idle and then checks that no runc container or
state, step directory, overlay or other mount, cgroup, BuildKit job (process or bundle in the BuildKit daemon's executor),
stray process or temporary/partial file of the services is left (leaks), that every step it started has a
record (lost), and that every record is final and whole, its log ending with its final state, the database
passing \`PRAGMA integrity_check\`, and the final state the one the fault must give (bad).

| fault | injected | steps | leaks | records lost | bad records | seconds |
|---|---|---|---|---|---|---|
${rows.join("\n")}
| **total** | **${total((result) => result.injected)}** | **${total((result) => result.steps)}** | **${total((result) => result.leaks.length)}** | **${total((result) => result.lost.length)}** | **${total((result) => result.bad.length)}** | ${total((result) => result.seconds).toFixed(0)} |
${details.length > 0 ? `\n## Findings\n\n${details.map((line) => `- ${line}`).join("\n")}\n` : ""}`;
await writeFile(values.out!, table);
console.log(table);
process.exitCode = total((result) => result.leaks.length + result.lost.length + result.bad.length) > 0 ? 1 : 0;
