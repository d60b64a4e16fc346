import { mkdir, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { zipSync } from "fflate";
import { commitFiles, gitIn } from "./git-fixture.js";

/**
 * Actions that misbehave on purpose, sized for the step-service's default limits: a result of 65 MiB (64 MiB
 * allowed), a log of 19 MB (16 MiB kept). A result written by the action itself is followed by exec, so that
 * opschain-action's own step_result.json (written at exit) never replaces it.
 */
export const HOSTILE_ACTIONS = `
RESULT = "/opt/opschain/#{ENV.fetch('OPSCHAIN_REPO_FOLDER', '.mintpress')}/step_result.json"
def result!(text)
  File.write(RESULT, text)
  exec('true')
end

task(:ok) { puts 'fine' }
task(:result_not_json) { result!('{"step": {"properties": ') }
task(:result_wrong_types) { result!('{"step": {"properties": ["not", "an", "object"]}}') }
task(:result_bad_child) { result!('{"child_step_definitions": {"children": ["deploy"]}}') }
task(:result_bad_diff) { result!('{"properties_diffs": {"project": [{"op": "explode", "path": "/x"}]}}') }
task(:result_huge) do
  File.open(RESULT, 'w') { |file| file.truncate(65 * 1024 * 1024) }
  exec('true')
end
task(:result_symlink) do
  File.delete(RESULT) if File.exist?(RESULT)
  File.symlink('/etc/shadow', RESULT)
  exec('true')
end
task(:flood) do
  $stdout.sync = true
  line = 'x' * 65_000
  300.times { puts line }
  puts 'after the flood'
end
task(:forkbomb) { exec('bash', '-c', 'bomb() { bomb | bomb & }; bomb; sleep 60') }
task(:hog) { chunks = []; loop { chunks << ('x' * 8 * 1024 * 1024) } }
task(:close_stdout) do
  $stdout.close
  warn 'stdout closed, still working'
  sleep 0.3
  OpsChain.properties_for(:project)['after_close'] = true
end
task(:close_both) do
  $stdout.close
  $stderr.close
  sleep 0.3
  OpsChain.properties_for(:project)['quiet'] = true
end
task(:sleep) { puts 'sleeping'; $stdout.flush; sleep 60 }
task(:inspect) do
  %w[escape-abs escape-up].each { |name| puts "#{name} -> #{File.readlink(name)}" }
  %w[bomb.zip bomb.tar.gz huge.bin].each { |name| puts "#{name} #{File.size(name)}" }
  puts "expanded: #{Dir.exist?('bomb') || File.exist?('zeros')}"
end
`;

/** Dockerfiles that try to reach outside their build context, one branch each. */
export const ESCAPING_DOCKERFILES = {
  "escape-copy": "COPY ../../../../etc/passwd /stolen",
  "escape-add": "ADD /etc/shadow /stolen",
  "escape-bind": "RUN --mount=type=bind,source=/,target=/host cat /host/etc/shadow",
  "escape-insecure": "RUN --security=insecure cat /proc/1/environ",
  "escape-url": "ADD http://127.0.0.1:5000/v2/_catalog /stolen",
} as const;

export const BOMB_BYTES = 64 * 1024 * 1024;
export const HUGE_FILE_BYTES = 24 * 1024 * 1024;

export interface HostileRepository {
  path: string;
  /** Sizes of the committed archive files. */
  sizes: { "bomb.zip": number; "bomb.tar.gz": number; "huge.bin": number };
}

const DATE = "2024-06-01T00:00:00Z";

/**
 * One repository (fixed names and dates, so the same commits and one image reused on every run) whose main
 * holds the misbehaving actions and hostile files: symlinks out of the tree, a zip bomb, a tar bomb, a huge
 * file. Branches: Dockerfiles that try to escape, a Dockerfile that is a symlink out of the repository, one
 * above the size limit, and trees with paths git refuses to check out ("..", ".git", ".GIT").
 */
export async function makeHostileRepository(path: string): Promise<HostileRepository> {
  await mkdir(path, { recursive: true });
  await gitIn(path, ["init", "-q", "-b", "main"]);
  const zeros = Buffer.alloc(BOMB_BYTES);
  const zip = Buffer.from(zipSync({ zeros: [zeros, { level: 9, mtime: new Date("2024-01-01T00:00:00Z") }] }));
  const tarBomb = gzipSync(Buffer.concat([tarHeader("bomb/zeros", BOMB_BYTES), zeros, Buffer.alloc(1024)]), { level: 9 });
  await writeFile(join(path, "bomb.zip"), zip);
  await writeFile(join(path, "bomb.tar.gz"), tarBomb);
  await writeFile(join(path, "huge.bin"), Buffer.alloc(HUGE_FILE_BYTES, "steprunner "));
  await symlink("/etc/shadow", join(path, "escape-abs"));
  await symlink("../../../../../../etc", join(path, "escape-up"));
  await commitFiles(path, { "actions.rb": HOSTILE_ACTIONS, "README.md": "# misbehaving on purpose\n" }, "hostile", DATE);

  const branch = async (name: string, files: Record<string, string>) => {
    await gitIn(path, ["checkout", "-q", "-b", name, "main"]);
    await commitFiles(path, files, name, DATE);
    await gitIn(path, ["checkout", "-q", "main"]);
  };
  for (const [name, line] of Object.entries(ESCAPING_DOCKERFILES)) {
    await branch(name, { ".mintpress/Dockerfile": `ARG OPSCHAIN_BASE_RUNNER\nFROM \${OPSCHAIN_BASE_RUNNER}\n${line}\n` });
  }
  await branch("dockerfile-symlink", { ".mintpress/Dockerfile": "->../../../../etc/passwd" });
  await branch("repo-folder-symlink", { ".mintpress": "->/etc" });
  await branch("big-dockerfile", { ".mintpress/Dockerfile": `FROM \${OPSCHAIN_BASE_RUNNER}\n# ${"x".repeat(1024 * 1024)}\n` });

  // Trees git itself never writes: plumbing makes them, as a hostile server could send them.
  const blob = await gitIn(path, ["hash-object", "-w", "--stdin"], DATE, "root:x:0:0:pwned\n");
  const inner = await gitIn(path, ["mktree"], DATE, `100644 blob ${blob}\tpasswd\n`);
  for (const [name, entry] of [
    ["dotdot", ".."],
    ["dotgit", ".git"],
    ["dotgit-upper", ".GIT"],
  ] as const) {
    const tree = await gitIn(path, ["mktree"], DATE, `040000 tree ${inner}\t${entry}\n100644 blob ${blob}\tREADME\n`);
    const commit = await gitIn(path, ["commit-tree", tree, "-m", name], DATE);
    await gitIn(path, ["branch", name, commit], DATE);
  }
  return { path, sizes: { "bomb.zip": zip.length, "bomb.tar.gz": tarBomb.length, "huge.bin": HUGE_FILE_BYTES } };
}

/** A ustar header for one regular file. */
function tarHeader(name: string, size: number): Buffer {
  const header = Buffer.alloc(512);
  header.write(name, 0);
  header.write("0000644\0", 100);
  header.write("0000000\0", 108);
  header.write("0000000\0", 116);
  header.write(`${size.toString(8).padStart(11, "0")}\0`, 124);
  header.write("00000000000\0", 136);
  header.write("        ", 148);
  header.write("0", 156);
  header.write("ustar\0" + "00", 257);
  let sum = 0;
  for (const byte of header) sum += byte;
  header.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148);
  return header;
}
