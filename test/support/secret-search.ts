import { lstat, readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import { gunzipSync } from "node:zlib";
import { unzipSync } from "fflate";
import tar from "tar-stream";

/**
 * Where a string occurs in bytes, looking inside gzip, zip and tar on the way (a layer is a tar, maybe
 * gzipped, that may hold a zip): the paths of the hits, "outer!inner" for a file inside another.
 */
export async function occurrences(bytes: Uint8Array, needle: string, name: string): Promise<string[]> {
  const found: string[] = [];
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (buffer.includes(needle)) found.push(name);
  if (buffer[0] === 0x1f && buffer[1] === 0x8b) {
    const inflated = (() => {
      try {
        return gunzipSync(buffer);
      } catch {
        return undefined;
      }
    })();
    if (inflated) found.push(...(await occurrences(inflated, needle, `${name}!gunzip`)));
  } else if (buffer.subarray(0, 4).equals(Buffer.from("PK\x03\x04", "latin1"))) {
    const entries = (() => {
      try {
        return unzipSync(buffer);
      } catch {
        return {};
      }
    })();
    for (const [entry, content] of Object.entries(entries)) found.push(...(await occurrences(content, needle, `${name}!${entry}`)));
  } else if (buffer.length >= 512 && buffer.subarray(257, 262).toString("latin1") === "ustar") {
    for (const [entry, content] of await tarEntries(buffer)) found.push(...(await occurrences(content, needle, `${name}!${entry}`)));
  }
  return found;
}

/** Every regular file under dir, searched as occurrences() does. */
export async function occurrencesUnder(dir: string, needle: string): Promise<string[]> {
  const found: string[] = [];
  for (const entry of await readdir(dir, { recursive: true })) {
    const path = join(dir, entry);
    const info = await lstat(path).catch(() => undefined);
    if (info?.isFile()) found.push(...(await occurrences(await readFile(path), needle, path)));
  }
  return found;
}

async function tarEntries(buffer: Buffer): Promise<[string, Buffer][]> {
  const entries: [string, Buffer][] = [];
  const extract = tar.extract();
  extract.on("entry", (header, stream, next) => {
    void bytesOf(stream).then((content) => {
      if (header.type === "file") entries.push([header.name, content]);
      next();
    }, next);
  });
  await new Promise<void>((resolve, reject) => {
    extract.on("finish", resolve);
    extract.on("error", reject);
    Readable.from([buffer]).pipe(extract);
  });
  return entries;
}

/** Searches a `docker save` stream: its configs and manifests, and every file of every layer. */
export async function occurrencesInImageArchive(archive: NodeJS.ReadableStream, needle: string): Promise<string[]> {
  const found: string[] = [];
  const outer = tar.extract();
  outer.on("entry", (header, stream, next) => {
    const done = (hits: string[]) => (found.push(...hits), next());
    if (header.name.endsWith("layer.tar")) {
      const inner = tar.extract();
      inner.on("entry", (file, content, nextFile) => {
        void bytesOf(content)
          .then((bytes) => occurrences(bytes, needle, `${header.name}!${file.name}`))
          .then((hits) => (found.push(...hits), nextFile()), nextFile);
      });
      inner.on("finish", () => next());
      inner.on("error", (error) => outer.destroy(error));
      stream.pipe(inner);
    } else {
      void bytesOf(stream)
        .then((bytes) => occurrences(bytes, needle, header.name))
        .then(done, (error: Error) => outer.destroy(error));
    }
  });
  await new Promise<void>((resolve, reject) => {
    outer.on("finish", resolve);
    outer.on("error", reject);
    archive.pipe(outer);
  });
  return found;
}

async function bytesOf(stream: AsyncIterable<unknown>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}
