import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { PathPatterns } from "../../services/image-service/buildkit/session/path-patterns.js";

/** Asserts which of the paths the patterns select, naming the paths that go the wrong way. */
function assertSelects(patterns: string[], selected: string[], notSelected: string[]): void {
  const matcher = new PathPatterns(patterns);
  assert.deepEqual(
    selected.filter((path) => !matcher.matches(path)),
    [],
    `${JSON.stringify(patterns)} must select these`,
  );
  assert.deepEqual(
    notSelected.filter((path) => matcher.matches(path)),
    [],
    `${JSON.stringify(patterns)} must not select these`,
  );
}

describe("PathPatterns, with BuildKit's (moby/patternmatcher's) semantics", () => {
  it("takes a leading **/ as any number of whole directories, not as any characters", () => {
    assertSelects(["**/vendor"], ["vendor", "lib/vendor", "lib/go/vendor", "lib/vendor/x.go"], ["myvendor", "lib/myvendor", "vendors"]);
  });

  it("takes a **/ inside a pattern as any number of whole directories", () => {
    assertSelects(["src/**/test"], ["src/test", "src/app/test", "src/app/unit/test"], ["src/apptest", "srctest", "src/app/latest"]);
  });

  it("takes a trailing ** as anything below, and ** alone as everything", () => {
    assertSelects(["logs/**"], ["logs/a", "logs/a/b.txt"], ["logs", "logsx/a"]);
    assertSelects(["**"], ["a", "a/b/c"], []);
  });

  it("takes a leading ** followed by a plain name as any path ending in that name", () => {
    assertSelects(["**.log"], ["a.log", "tmp/b.log", ".log"], ["a.logs", "log"]);
  });

  it("takes [...] as a character class: listed characters, ranges, negation and escapes", () => {
    assertSelects(["[ab].txt"], ["a.txt", "b.txt"], ["c.txt", "ab.txt", "[ab].txt"]);
    assertSelects(["v[0-9]"], ["v0", "v7"], ["va", "v10"]);
    assertSelects(["[^ab].md"], ["c.md"], ["a.md", "b.md"]);
    assertSelects(["x[\\]\\-]y"], ["x]y", "x-y"], ["xay"]);
  });

  it("takes ? as exactly one character other than /", () => {
    assertSelects(["file?.txt"], ["file1.txt", "fileé.txt"], ["file.txt", "file12.txt"]);
    assertSelects(["a?b"], ["axb"], ["a/b"]);
  });

  it("takes * as any characters within one path element", () => {
    assertSelects(["*.tmp"], ["a.tmp", ".tmp", "cache.tmp/inner"], ["dir/a.tmp"]);
    assertSelects(["src/*.ts"], ["src/a.ts"], ["src/lib/a.ts", "a.ts"]);
  });

  it("matches everything below a directory the pattern matches", () => {
    assertSelects(["build"], ["build", "build/out/app.js"], ["builds", "src/build"]);
  });

  it("lets a later ! pattern re-include and a later plain pattern exclude again", () => {
    assertSelects(["*.md", "!README.md"], ["CHANGES.md"], ["README.md", "main.go"]);
    assertSelects(["!README.md", "*.md"], ["README.md", "CHANGES.md"], []);
    assertSelects(["docs", "!docs/keep", "docs/keep/secret"], ["docs/a.md", "docs/keep/secret"], ["docs/keep/b.md", "docs/keep"]);
  });

  it("takes a character after \\ literally", () => {
    assertSelects(["\\*.txt"], ["*.txt"], ["a.txt"]);
    assertSelects(["what\\?"], ["what?"], ["whatx"]);
  });

  it("takes the characters regular expressions give meaning to literally", () => {
    assertSelects(["a.b"], ["a.b"], ["axb"]);
    assertSelects(["(x)+{1}|$^"], ["(x)+{1}|$^"], ["xx"]);
  });

  it("cleans patterns as paths: ./, a leading or trailing /, doubled / and .. are ignored or resolved", () => {
    assertSelects(["./src/"], ["src/a"], ["x/src"]);
    assertSelects(["/src//lib"], ["src/lib"], ["src"]);
    assertSelects(["src/../lib"], ["lib/a"], ["src/lib"]);
    assertSelects(["  spaced  "], ["spaced"], []);
  });

  it("refuses patterns BuildKit refuses, naming the pattern", () => {
    for (const pattern of ["[ab", "x[]", "[z-a]", "[-a]", "trailing\\", "!"]) {
      assert.throws(
        () => new PathPatterns([pattern]),
        (error: Error) => error.message.includes(JSON.stringify(pattern)),
        pattern,
      );
    }
  });

  it("tells whether a plain pattern may match below a directory, so that a walk can skip the others", () => {
    const patterns = new PathPatterns(["src/app/*.ts", "!lib/keep", "**/docs/*.md"]);
    assert.equal(patterns.mayMatchBelow("src"), true);
    assert.equal(patterns.mayMatchBelow("src/app"), true);
    assert.equal(patterns.mayMatchBelow("srcx"), true, "**/docs may match anywhere");
    const literal = new PathPatterns(["src/app/*.ts", "!lib/keep"]);
    assert.equal(literal.mayMatchBelow("srcx"), false);
    assert.equal(literal.mayMatchBelow("src/lib"), false);
    assert.equal(literal.mayMatchBelow("lib"), false, "an exception selects nothing");
  });

  it("tells whether an exception may match below a directory, so that an excluded directory is walked only then", () => {
    const patterns = new PathPatterns(["node_modules", "!node_modules/keep", "cache"]);
    assert.equal(patterns.exceptionMayMatchBelow("node_modules"), true);
    assert.equal(patterns.exceptionMayMatchBelow("cache"), false);
  });
});
