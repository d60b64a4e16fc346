import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { findRemoteSource } from "../../services/image-service/core/remote-sources.js";

describe("ADD sources BuildKit would fetch from the network", () => {
  const base = "ARG OPSCHAIN_BASE_RUNNER\nFROM ${OPSCHAIN_BASE_RUNNER}\n";

  it("finds URLs and git remotes, in shell and JSON form, with flags, in any case", () => {
    for (const [line, source] of [
      ["ADD http://127.0.0.1:5000/v2/_catalog /x", "http://127.0.0.1:5000/v2/_catalog"],
      ["add --chown=1:1 https://example.test/a.tgz /x", "https://example.test/a.tgz"],
      ['ADD ["local.txt", "ftp://example.test/f", "/x/"]', "ftp://example.test/f"],
      ["ADD git@example.test:org/repo.git /src", "git@example.test:org/repo.git"],
    ]) {
      assert.deepEqual(findRemoteSource(`${base}${line}\n`), { line: 3, source }, line);
    }
  });

  it("sees through line continuations, the escape directive and variables", () => {
    assert.deepEqual(findRemoteSource(`${base}ADD \\\n  # a comment\n  http://127.0.0.1:7703/metrics /x\n`), {
      line: 3,
      source: "http://127.0.0.1:7703/metrics",
    });
    assert.deepEqual(findRemoteSource("# escape=`\nFROM x\nADD `\n http://127.0.0.1/a /x\n"), { line: 3, source: "http://127.0.0.1/a" });
    assert.deepEqual(findRemoteSource(`${base}ARG HOST=127.0.0.1:5000\nENV URL http://\${HOST}/v2/_catalog\nADD $URL /x\n`), {
      line: 5,
      source: "http://127.0.0.1:5000/v2/_catalog",
    });
  });

  it("lets local sources, COPY and RUN through", () => {
    assert.equal(findRemoteSource(`${base}ADD repo.tar /\nADD --chown=1:1 files/ /opt/\nCOPY http.txt /x\nRUN curl http://example.test\n`), undefined);
  });
});
