import { setTimeout as delay } from "node:timers/promises";
import { presentStep, progressModeOnThisTerminal } from "../../services/cli/step.js";
import { recordedStepEvents } from "./recorded-step-events.js";

/**
 * Shows the recorded step's events through the CLI's own presentation, with `--progress tty` asked for and
 * the events as far apart as they were recorded: for a test that runs this under a pseudo-terminal.
 */
async function* replay() {
  let previousMs = 0;
  for (const { atMs, response } of recordedStepEvents(Date.now())) {
    await delay(atMs - previousMs);
    previousMs = atMs;
    yield response;
  }
}

await presentStep(replay(), progressModeOnThisTerminal("tty"));
