import { setTimeout as delay } from "node:timers/promises";
import { presentChange } from "../../services/cli/change.js";
import { progressModeOnThisTerminal } from "../../services/cli/step.js";
import { recordedChangeEvents } from "./recorded-change-events.js";

/** Shows the recorded change's events through the CLI's own presentation, with `--progress tty` asked for, as far apart as recorded. */
async function* replay() {
  let previousMs = 0;
  for (const { atMs, response } of recordedChangeEvents()) {
    await delay(atMs - previousMs);
    previousMs = atMs;
    yield response;
  }
}

await presentChange(replay(), progressModeOnThisTerminal("tty"));
