import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { describe, it } from "node:test";
import { ChangeTreeView, renderChangeFrame } from "../../services/cli/change-tty.js";
import { renderFrame, StepView } from "../../services/cli/tty-progress.js";
import { recordedChangeEvents } from "../support/recorded-change-events.js";
import { recordedStepEvents } from "../support/recorded-step-events.js";

const T0 = Date.UTC(2026, 0, 5, 9, 0, 0);

/** The view after the recorded events that arrived up to untilMs. */
function viewUntil(untilMs: number): StepView {
  const view = new StepView();
  for (const { atMs, response } of recordedStepEvents(T0)) if (atMs <= untilMs) view.apply(response, T0 + atMs);
  return view;
}

const replay = fileURLToPath(new URL("../support/replay-step-events.js", import.meta.url));
const replayChange = fileURLToPath(new URL("../support/replay-change-events.js", import.meta.url));
const exec = promisify(execFile);
const hasScript = existsSync("/usr/bin/script");

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

/** The change view after the recorded events that arrived up to untilMs. */
function changeViewUntil(untilMs: number): ChangeTreeView {
  const view = new ChangeTreeView();
  for (const { atMs, response } of recordedChangeEvents()) if (atMs <= untilMs) view.apply(response, T0 + atMs);
  return view;
}

describe("the live change view of run --children --progress tty", () => {
  it("shows the tree with each step's state and timer, a group's strategy, and the last log lines of running steps", () => {
    assert.equal(
      renderChangeFrame(changeViewUntil(500), T0 + 600, 60, 30),
      [
        "[+] Change chg: running                                0.6s",
        " => chg.1 deploy → sequential: success                 0.2s",
        " =>   chg.2 prepare: success                           0.1s",
        " =>   chg.3 Deploy apps [group] ⇉ parallel: running    0.2s",
        " =>     chg.4 app_1: building                          0.2s",
        " =>     chg.5 app_2: running                           0.2s",
        " =>        # app 2 half way",
        " =>   chg.6 Smoke test [wait]: queued",
        "",
      ].join("\n"),
    );
  });

  it("shows a waiting step with the command that continues it, and ends with every timer stopped", () => {
    assert.match(
      renderChangeFrame(changeViewUntil(700), T0 + 800, 80, 30),
      / => {3}chg\.6 Smoke test \[wait\]: waiting +0\.1s\n => {6}waiting: steprunner continue chg chg\.6\n/,
    );
    const final = renderChangeFrame(changeViewUntil(1000), T0 + 1000, 60, 30);
    assert.equal(renderChangeFrame(changeViewUntil(1000), T0 + 99_000, 60, 30), final, "a finished change's timers do not run on");
    assert.match(final, /^\[\+\] Change chg: success \(every step succeeded\) +1\.0s\n/);
    assert.doesNotMatch(final, /# deploying/, "log lines of ended steps are not shown");
  });

  it("redraws the tree in place under a pseudo-terminal", { skip: !hasScript && "script(1) is not installed" }, async () => {
    const { stdout } = await exec("script", ["-qfec", `stty cols 100 rows 40; ${process.execPath} ${replayChange}`, "/dev/null"], { timeout: 30_000 });
    // biome-ignore lint/suspicious/noControlCharactersInRegex: terminal escape sequences are what it looks for
    const redraws = stdout.match(/\x1b\[\d+A/g) ?? [];
    assert.ok(redraws.length >= 3, `redrawn ${redraws.length} times:\n${stdout}`);
    const lastFrame = stdout.slice(stdout.lastIndexOf(redraws.at(-1)!));
    assert.match(lastFrame, / => {5}chg\.5 app_2: success/);
    assert.match(stdout, /change chg: success \(every step succeeded\)\r?\n/, "the outcome follows the view");
  });
});
