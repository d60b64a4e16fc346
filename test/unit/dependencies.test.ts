import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { ROOT } from "../support/stack.js";

/** The TypeScript sources of the services, what the runtime dependencies are there for. */
async function serviceSources(dir = join(ROOT, "services")): Promise<string[]> {
  const texts: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) texts.push(...(await serviceSources(path)));
    else if (entry.name.endsWith(".ts")) texts.push(await readFile(path, "utf8"));
  }
  return texts;
}

describe("package.json", () => {
  it("lists as runtime dependencies only packages the services import", async () => {
    const { dependencies } = JSON.parse(await readFile(join(ROOT, "package.json"), "utf8")) as { dependencies: Record<string, string> };
    const sources = (await serviceSources()).join("\n");
    const unused = Object.keys(dependencies).filter((name) => !sources.includes(`from "${name}"`) && !sources.includes(`from "${name}/`));
    assert.deepEqual(unused, []);
  });
});
