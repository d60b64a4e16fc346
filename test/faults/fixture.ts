import { execFile } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";

const exec = promisify(execFile);

const ACTIONS = `desc 'Ends at once'
task :quick do
  puts 'quick step'
end

desc 'Runs until it is stopped'
task :sleep do
  puts 'sleeping'
  $stdout.flush
  sleep 600
end
`;

const HEADER = `ARG OPSCHAIN_BASE_RUNNER

FROM scratch AS repository
ADD repo.tar /

FROM \${OPSCHAIN_BASE_RUNNER}
ARG OPSCHAIN_VERSION
`;
const FOOTER = `ARG GIT_REV
ARG GIT_SHA
LABEL org.steprunner.git-sha="\${GIT_SHA}"
`;

/** A RUN that never ends by itself, so it is never cached and every build of this branch is mid-build until stopped. */
const SLOW_BUILD = `${HEADER}RUN echo "fault suite: a long RUN" && sleep 600
COPY --from=repository --chown=10001:10001 / /opt/opschain/
${FOOTER}`;

/** A layer of incompressible bytes after the commit's layer, so every commit pushes and pulls a new 24 MiB layer. */
const BIG_LAYER = `${HEADER}COPY --from=repository --chown=10001:10001 / /opt/opschain/
RUN head -c 24M /dev/urandom >/opt/opschain/big.bin
${FOOTER}`;

/** A RUN of a few seconds that depends on the commit: a build that a restart of the BuildKit daemon can interrupt. */
const SHORT_BUILD = `${HEADER}COPY --from=repository --chown=10001:10001 / /opt/opschain/
RUN echo "fault suite: a short RUN" && sleep 6
${FOOTER}`;

export const BRANCHES = { main: "main", slowBuild: "slow-build", bigLayer: "big-layer", shortBuild: "short-build" } as const;

/**
 * The suite's git repository: Rake actions that end at once or run until stopped, and branches whose
 * Dockerfiles make a build that never ends, one with a big new layer per commit, and one with a short RUN per commit.
 */
export class FaultFixture {
  private commits = 0;

  constructor(readonly dir: string) {}

  async create(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    await this.git("init", "-q", "-b", "main");
    await writeFile(join(this.dir, "actions.rb"), ACTIONS);
    await this.commit("Fault suite actions");
    for (const [branch, dockerfile] of [
      [BRANCHES.slowBuild, SLOW_BUILD],
      [BRANCHES.bigLayer, BIG_LAYER],
      [BRANCHES.shortBuild, SHORT_BUILD],
    ] as const) {
      await this.git("checkout", "-q", "-b", branch, "main");
      await mkdir(join(this.dir, ".mintpress"), { recursive: true });
      await writeFile(join(this.dir, ".mintpress", "Dockerfile"), dockerfile);
      await this.commit(`Dockerfile of ${branch}`);
    }
    await this.git("checkout", "-q", "main");
  }

  /** A new commit on a branch, so that its build cannot be reused. */
  async newCommit(branch: string): Promise<void> {
    await this.git("checkout", "-q", branch);
    await writeFile(join(this.dir, "unique.txt"), `${process.pid} ${Date.now()} ${this.commits}\n`);
    await this.commit(`Unique commit ${this.commits}`);
    await this.git("checkout", "-q", "main");
  }

  private async commit(message: string): Promise<void> {
    this.commits++;
    await this.git("add", "-A");
    await this.git("-c", "commit.gpgsign=false", "commit", "-q", "-m", message);
  }

  private async git(...args: string[]): Promise<void> {
    const env = {
      ...process.env,
      GIT_AUTHOR_NAME: "fault suite",
      GIT_AUTHOR_EMAIL: "faults@steprunner.invalid",
      GIT_COMMITTER_NAME: "fault suite",
      GIT_COMMITTER_EMAIL: "faults@steprunner.invalid",
    };
    await exec("git", ["-C", this.dir, ...args], { env });
  }
}
