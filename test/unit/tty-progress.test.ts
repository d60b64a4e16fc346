import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { describe, it } from "node:test";
import { renderFrame, StepView } from "../../services/cli/tty-progress.js";
import { recordedStepEvents } from "../support/recorded-step-events.js";

const T0 = Date.UTC(2026, 0, 5, 9, 0, 0);

/** The view after the recorded events that arrived up to untilMs. */
function viewUntil(untilMs: number): StepView {
  const view = new StepView();
  for (const { atMs, response } of recordedStepEvents(T0)) if (atMs <= untilMs) view.apply(response, T0 + atMs);
  return view;
}

const replay = fileURLToPath(new URL("../support/replay-step-events.js", import.meta.url));
const exec = promisify(execFile);

describe("the live step view of --progress tty", () => {
  it("shows the build's vertices with their timers and the running one's last log lines, and the step's phases", () => {
    assert.equal(
      renderFrame(viewUntil(900), T0 + 950, 60, 30),
      [
        "[+] Building 0.6s (1/2)",
        " => [1/2] FROM 127.0.0.1:5000/steprunner/runner:0.1.0  0.2s",
        " => [2/2] RUN bundle install                           0.3s",
        " => => # Fetching rake 13.2.1",
        " => => # Installing rake 13.2.1",
        "[+] Step step-1: building                              0.9s",
        " => queued                                             0.1s",
        " => preparing                                          0.3s",
        " => building                                           0.6s",
        "",
      ].join("\n"),
    );
  });

  it("ends with every timer stopped, the build finished and the step's outcome and last log lines", () => {
    const view = viewUntil(2000);
    const final = [
      "[+] Building 0.9s (2/2) FINISHED",
      " => [1/2] FROM 127.0.0.1:5000/steprunner/runner:0.1.0  0.2s",
      " => [2/2] RUN bundle install                           0.5s",
      "[+] Step step-1: success (exit status 0)               2.0s",
      " => queued                                             0.1s",
      " => preparing                                          0.3s",
      " => building                                           0.9s",
      " => running                                            0.7s",
      " => => # deploying to staging",
      " => => # warning: slow network",
      " => => # deployed",
      "",
    ].join("\n");
    assert.equal(renderFrame(view, T0 + 2050, 60, 30), final);
    assert.equal(renderFrame(view, T0 + 99_000, 60, 30), final, "a finished step's timers do not run on");
  });

  it("cuts lines to the terminal's width and keeps the frame below its height, the newest lines kept", () => {
    const lines = renderFrame(viewUntil(2000), T0 + 2050, 30, 6)
      .split("\n")
      .slice(0, -1);
    assert.equal(lines.length, 5);
    assert.ok(
      lines.every((line) => line.length <= 29),
      lines.join("\n"),
    );
    assert.deepEqual(lines.slice(-2), [" => => # warning: slow networ", " => => # deployed"]);
    assert.match(lines[0]!, /^ => building +0\.9s$/);
  });

  const hasScript = existsSync("/usr/bin/script");
  it("redraws in place under a pseudo-terminal, at most ten times a second", { skip: !hasScript && "script(1) is not installed" }, async () => {
    const started = Date.now();
    const { stdout } = await exec("script", ["-qfec", `stty cols 100 rows 40; ${process.execPath} ${replay}`, "/dev/null"], { timeout: 30_000 });
    const elapsedMs = Date.now() - started;
    // biome-ignore lint/suspicious/noControlCharactersInRegex: terminal escape sequences are what it looks for
    const redraws = stdout.match(/\x1b\[\d+A/g) ?? [];
    assert.ok(redraws.length >= 5, `redrawn ${redraws.length} times:\n${stdout}`);
    assert.ok(redraws.length <= elapsedMs / 100 + 2, `${redraws.length} redraws in ${elapsedMs} ms`);
    const lastFrame = stdout.slice(stdout.lastIndexOf(redraws.at(-1)!));
    assert.match(lastFrame, /\[\+\] Building 0\.9s \(2\/2\) FINISHED/);
    assert.match(lastFrame, /\[\+\] Step step-1: success \(exit status 0\)/);
    // biome-ignore lint/suspicious/noControlCharactersInRegex: terminal escape sequences are what it looks for
    assert.match(lastFrame, / => => # deployed\x1b\[K/);
    assert.match(stdout, /step step-1: success \(exit status 0\)\r?\n$/, "the outcome follows the view");
  });

  it("is plain text when stdout is not a terminal", async () => {
    const { stdout, stderr } = await exec(process.execPath, [replay], { timeout: 30_000 });
    assert.equal(stdout, "deploying to staging\ndeployed\n");
    // biome-ignore lint/suspicious/noControlCharactersInRegex: terminal escape sequences are what it looks for
    assert.doesNotMatch(stderr, /\x1b\[/);
    assert.match(stderr, /^step step-1 accepted\nqueued…\npreparing…\nbuilding…\n/);
    assert.match(stderr, /#2 \[2\/2\] RUN bundle install/);
  });
});
