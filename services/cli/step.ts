import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { type JsonObject, toJson } from "@bufbuild/protobuf";
import { ConnectError, createClient } from "@connectrpc/connect";
import { LogStream } from "../../gen/steprunner/image/v1/image_service_pb.js";
import {
  type LogLine,
  type RunStepResponse,
  RunStepResponseSchema,
  type Step,
  StepService,
  StepState,
  StepResultSchema,
} from "../../gen/steprunner/step/v1/step_service_pb.js";
import { serviceTransport } from "../shared/client/transport.js";
import { BuildProgressPrinter } from "./build-progress.js";
import { type Command, clientSecurity, serviceAddressOptions } from "./command.js";
import { LiveView, renderFrame, StepView } from "./tty-progress.js";
import { exitStatusOfChange, presentChange } from "./change.js";

const stepAddr = { "step-addr": serviceAddressOptions["step-addr"] };

/** The CLI's exit status for a finished step: the action's own, or a conventional code for the other ends. */
export function exitStatusOf(step: Step): number {
  switch (step.state) {
    case StepState.SUCCESS:
      return 0;
    case StepState.ERROR:
      if (step.signal) return 128 + (signalNumbers[step.signal] ?? 9);
      return step.exitCode || 1;
    case StepState.TIMED_OUT:
      return 124;
    case StepState.CANCELLED:
      return 130;
    case StepState.HANDED_BACK:
      return 75; // EX_TEMPFAIL: run it again
    default:
      return 70;
  }
}
const signalNumbers: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGABRT: 6, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGTERM: 15 };

function printLine(line: LogLine): void {
  const out = line.stream === LogStream.STDERR || line.stream === LogStream.SYSTEM ? process.stderr : process.stdout;
  out.write(`${line.text}\n`);
}

function fail(error: unknown): number {
  const connect = ConnectError.from(error);
  console.error(`steprunner: ${connect.rawMessage} (${connect.code})`);
  return 1;
}

export type RunProgress = "plain" | "tty" | "json";

/** tty only when stdout and stderr are terminals: the view is drawn on stderr, and redirected it is noise. */
export function progressModeOnThisTerminal(requested: RunProgress): RunProgress {
  return requested === "tty" && !(process.stdout.isTTY && process.stderr.isTTY) ? "plain" : requested;
}

/** Shows a step's events as they arrive, in the given mode, then its outcome; returns the finished step. */
export async function presentStep(responses: AsyncIterable<RunStepResponse>, progress: RunProgress): Promise<Step> {
  const builds = new BuildProgressPrinter("plain", (text) => process.stderr.write(text));
  const view = new StepView();
  const live = progress === "tty" ? new LiveView(process.stderr, (now, columns, rows) => renderFrame(view, now, columns, rows)) : undefined;
  let finished: Step | undefined;
  try {
    for await (const response of responses) {
      const event = response.event;
      if (event.case === "finished") finished = event.value.step;
      if (progress === "json") console.log(JSON.stringify(toJson(RunStepResponseSchema, response)));
      else if (live) view.apply(response, Date.now());
      else if (event.case === "accepted") console.error(`step ${event.value.step?.id} accepted`);
      else if (event.case === "phaseChanged") console.error(`${StepState[event.value.state].toLowerCase()}…`);
      else if (event.case === "warning") console.error(`warning: ${event.value}`);
      else if (event.case === "logLine") printLine(event.value);
      else if (event.case === "buildProgress") builds.print(event.value);
    }
  } finally {
    live?.end();
  }
  if (!finished) throw new Error("the step-service ended the stream without a finished event");
  if (progress !== "json") {
    if (finished.imageId) console.error(`image ${finished.imageId} ${finished.imageReused ? "reused: nothing to build" : "built"}`);
    console.error(`step ${finished.id}: ${StepState[finished.state].toLowerCase()} (${finished.reason})`);
    if (finished.result) console.log(JSON.stringify(toJson(StepResultSchema, finished.result), null, 2));
  }
  return finished;
}

export const runCommand: Command = {
  usage:
    "--repo R (--action A | --action-name NAME …) [--rev V] [--repo-folder DIR] [--env K=V …] [--properties F] [--timeout S] [--network] [--children] [--dry-run] [--progress plain|tty|json]",
  options: {
    ...stepAddr,
    repo: { type: "string", description: "the repository: a local path or a git URL" },
    rev: { type: "string", description: "GIT_REV: a branch, tag or commit", default: "HEAD" },
    action: { type: "string", description: 'what opschain-action runs: one or more Rake tasks of actions.rb ("build test"), or -T / -AT to list them' },
    "action-name": {
      type: "string",
      multiple: true,
      description: 'one action by name or step name, spaces kept ("Hello world action"); repeatable, run in order (instead of --action)',
    },
    "repo-folder": { type: "string", description: "OPSCHAIN_REPO_FOLDER, e.g. .opschain (default: the service's, .mintpress)" },
    children: {
      type: "boolean",
      description: "run the step's child steps too (as its step_result.json declares them), each in a fresh container: a change (RunChange)",
    },
    "change-id": { type: "string", description: "with --children: the change's id (default: the service picks one)" },
    "dry-run": { type: "boolean", description: "run with OPSCHAIN_DRY_RUN=true: the action reports its expected step tree instead of running" },
    env: { type: "string", multiple: true, description: 'an env var property K=V for the step (repeatable; owner "change")' },
    properties: { type: "string", description: 'a JSON file: {"<owner>": {…properties…}, …} in merge order' },
    secret: { type: "string", multiple: true, description: "a JSON pointer to a secret property, e.g. /project/opschain/env/TOKEN (repeatable)" },
    timeout: { type: "string", description: "seconds before the step is stopped (default: the service's)" },
    network: { type: "boolean", description: "run with the host's network instead of none" },
    progress: {
      type: "string",
      description: "plain (log lines and phases as text), tty (a live view, plain when not on a terminal) or json (one event a line)",
      default: "plain",
    },
  },
  async run(values) {
    const actionNames = (values["action-name"] as string[] | undefined) ?? [];
    if (!values.repo || (values.action === undefined) === (actionNames.length === 0)) {
      console.error("steprunner run: --repo is required, and either --action or --action-name");
      return 2;
    }
    const progress = String(values.progress) as RunProgress;
    if (!["plain", "tty", "json"].includes(progress)) {
      console.error("steprunner run: --progress must be plain, tty or json");
      return 2;
    }
    const properties: { owner: string; properties: JsonObject }[] = [];
    if (typeof values.properties === "string") {
      const file = JSON.parse(await readFile(values.properties, "utf8")) as Record<string, JsonObject>;
      for (const [owner, set] of Object.entries(file)) properties.push({ owner, properties: set });
    }
    const env = (values.env as string[] | undefined) ?? [];
    if (env.length > 0) {
      let change = properties.find((set) => set.owner === "change");
      if (!change) properties.push((change = { owner: "change", properties: {} }));
      const opschain = (change.properties.opschain ??= {}) as JsonObject;
      const vars = (opschain.env ??= {}) as JsonObject;
      for (const pair of env) {
        const eq = pair.indexOf("=");
        if (eq <= 0) {
          console.error(`steprunner run: --env ${pair} is not K=V`);
          return 2;
        }
        vars[pair.slice(0, eq)] = pair.slice(eq + 1);
      }
    }
    const timeout = values.timeout === undefined ? undefined : Number(values.timeout);
    if (timeout !== undefined && !(timeout > 0)) {
      console.error("steprunner run: --timeout must be a positive number of seconds");
      return 2;
    }
    const repo = String(values.repo);
    const transport = serviceTransport(String(values["step-addr"]), clientSecurity());
    const abort = new AbortController();
    process.once("SIGINT", () => abort.abort());
    const stepTimeout = timeout ? { timeout: { seconds: BigInt(Math.floor(timeout)), nanos: Math.round((timeout % 1) * 1e9) } } : {};
    const step = {
      repositoryUrl: /^[a-z]+:\/\//.test(repo) ? repo : resolve(repo),
      gitRev: String(values.rev),
      ...(actionNames.length > 0 ? { actions: actionNames } : { action: String(values.action) }),
      properties,
      secretPointers: (values.secret as string[] | undefined) ?? [],
      hostNetwork: values.network === true,
      repoFolder: typeof values["repo-folder"] === "string" ? values["repo-folder"] : "",
      dryRun: values["dry-run"] === true,
    };
    try {
      const client = createClient(StepService, transport.transport);
      if (values.children === true) {
        // The timeout covers the whole tree (and each step).
        const responses = client.runChange(
          { changeId: typeof values["change-id"] === "string" ? values["change-id"] : "", step: { ...step, ...stepTimeout }, ...stepTimeout },
          { signal: abort.signal },
        );
        const change = await presentChange(responses, progressModeOnThisTerminal(progress));
        return exitStatusOfChange(change);
      }
      const responses = client.runStep({ ...step, ...stepTimeout }, { signal: abort.signal });
      const finished = await presentStep(responses, progressModeOnThisTerminal(progress));
      return exitStatusOf(finished);
    } catch (error) {
      return fail(error);
    } finally {
      transport.close();
    }
  },
};

export const logsCommand: Command = {
  usage: "ID [--follow] [--from N]",
  positionals: true,
  options: {
    ...stepAddr,
    follow: { type: "boolean", description: "keep printing until the step ends" },
    from: { type: "string", description: "the first line to print (offset from 0)", default: "0" },
  },
  async run(values, positionals = []) {
    const [id] = positionals;
    const from = Number(values.from);
    if (!id || !Number.isInteger(from) || from < 0) {
      console.error("steprunner logs: give a step ID, and --from a non-negative line offset");
      return 2;
    }
    const transport = serviceTransport(String(values["step-addr"]), clientSecurity());
    try {
      const client = createClient(StepService, transport.transport);
      for await (const response of client.followLogs({ stepId: id, fromOffset: BigInt(from), follow: values.follow === true })) {
        if (response.line) printLine(response.line);
      }
      return 0;
    } catch (error) {
      return fail(error);
    } finally {
      transport.close();
    }
  },
};

export const cancelCommand: Command = {
  usage: "ID",
  positionals: true,
  options: { ...stepAddr },
  async run(_values, positionals = []) {
    const [id] = positionals;
    if (!id) {
      console.error("steprunner cancel: give a step ID");
      return 2;
    }
    const transport = serviceTransport(String(_values["step-addr"]), clientSecurity());
    try {
      const { step } = await createClient(StepService, transport.transport).cancelStep({ stepId: id });
      console.log(`step ${id}: ${StepState[step!.state].toLowerCase()} (${step!.reason || "cancelling"})`);
      return 0;
    } catch (error) {
      return fail(error);
    } finally {
      transport.close();
    }
  },
};
