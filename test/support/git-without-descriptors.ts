// Run under a low `ulimit -n` (context-git-abort.test.ts): uses up the file descriptors left, then asks git for its
// version, and prints how that call ended; the process must live on to print it.
import { closeSync, openSync } from "node:fs";
import { git } from "../../services/context-service/core/git.js";

const held: number[] = [];
try {
  for (;;) held.push(openSync("/dev/null", "r"));
} catch {
  // out of descriptors
}
// Two free: fewer than the pipes for git's input and output need.
closeSync(held.pop()!);
closeSync(held.pop()!);
const outcome = await git(["--version"]).then(
  () => "ran",
  (error: Error) => `failed: ${error.message}`,
);
for (const fd of held) closeSync(fd);
// An 'error' of the child that nobody hears would end the process before this line.
await new Promise((resolve) => setTimeout(resolve, 50));
console.log(outcome);
