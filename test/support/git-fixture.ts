import { execFile } from "node:child_process";
import { chmod, mkdir, symlink, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { promisify } from "node:util";

const execFileAsync = promisify(execFile);

/** Fixed names and dates, so the fixture's commits have the same SHAs on every machine and every run. */
function fixedEnvironment(date: string): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    HOME: "/nonexistent",
    GIT_CONFIG_NOSYSTEM: "1",
    GIT_CONFIG_GLOBAL: "/dev/null",
    GIT_AUTHOR_NAME: "Fixture Author",
    GIT_AUTHOR_EMAIL: "author@fixture.test",
    GIT_COMMITTER_NAME: "Fixture Committer",
    GIT_COMMITTER_EMAIL: "committer@fixture.test",
    GIT_AUTHOR_DATE: date,
    GIT_COMMITTER_DATE: date,
    TZ: "UTC",
  };
}

/** Runs git in a repository with the fixture's fixed identity, giving it input when asked; returns trimmed stdout. */
export async function gitIn(cwd: string, args: string[], date = "2024-01-01T00:00:00Z", input?: string): Promise<string> {
  const running = execFileAsync("git", args, { cwd, env: fixedEnvironment(date), maxBuffer: 64 * 1024 * 1024 });
  // git may exit before reading its input (an error); its status says what happened, not the broken pipe.
  running.child.stdin?.on("error", () => undefined);
  running.child.stdin?.end(input);
  const { stdout } = await running;
  return stdout.trim();
}

/** Writes files (path → content; a content starting with "->" makes a symlink) and commits them all. */
export async function commitFiles(repo: string, files: Record<string, string>, message: string, date: string, executable: string[] = []): Promise<string> {
  for (const [path, content] of Object.entries(files)) {
    const full = join(repo, path);
    await mkdir(dirname(full), { recursive: true });
    if (content.startsWith("->")) await symlink(content.slice(2), full);
    else await writeFile(full, content);
    if (executable.includes(path)) await chmod(full, 0o755);
  }
  await gitIn(repo, ["add", "-A"], date);
  await gitIn(repo, ["commit", "-q", "-m", message], date);
  return gitIn(repo, ["rev-parse", "HEAD"], date);
}

export interface Fixture {
  path: string;
  /** The first commit (tagged v1). */
  first: string;
  /** The second commit, main's head: adds an export-ignore path, a symlink, an executable and .mintpress/. */
  second: string;
}

/**
 * The fixture repository whose repo.tar digest is the golden value: two commits on main, a tag v1 on the
 * first, fixed dates and names. Changing anything here changes the golden digest.
 */
export async function makeFixture(path: string): Promise<Fixture> {
  await mkdir(path, { recursive: true });
  await gitIn(path, ["init", "-q", "-b", "main"]);
  const first = await commitFiles(path, { "README.md": "# fixture\n", "actions.rb": "task :hello do\n  puts 'hello'\nend\n" }, "first", "2024-01-01T00:00:00Z");
  await gitIn(path, ["tag", "v1"]);
  const second = await commitFiles(
    path,
    {
      ".gitattributes": "docs/internal/** export-ignore\nVERSION export-subst\n",
      "docs/internal/notes.txt": "not for the image\n",
      "docs/guide.md": "guide\n",
      "bin/run.sh": "#!/bin/sh\necho run\n",
      "link-to-readme": "->README.md",
      VERSION: "$Format:%H$\n",
      ".mintpress/Dockerfile": "ARG OPSCHAIN_BASE_RUNNER\nFROM ${OPSCHAIN_BASE_RUNNER}\nRUN echo custom\n",
    },
    "second",
    "2024-01-02T00:00:00Z",
    ["bin/run.sh"],
  );
  return { path, first, second };
}
