import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { createWriteStream } from "node:fs";
import { chmod, chown, lchown, link, lstat, lutimes, mkdir, readdir, readFile, rename, rm, symlink, utimes, writeFile } from "node:fs/promises";
import { dirname, join, normalize } from "node:path";
import { type Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { promisify } from "node:util";
import { createGunzip } from "node:zlib";
import tar from "tar-stream";
import type { Logger } from "../../shared/log.js";
import { writeFileAtomic } from "../../shared/files/atomic-write.js";
import { SingleFlight } from "../../shared/single-flight.js";

const exec = promisify(execFile);
const DIFF_ID = /^sha256:[a-f0-9]{64}$/;
/** How stale a layer's last-use time on disk may grow; it only orders collection after a restart. */
const LAST_USED_WRITE_MS = 60_000;

/** How a layer's tar arrives. */
export interface LayerBlob {
  /** "sha256:…" of the uncompressed tar, checked while unpacking. */
  diffId: string;
  compression: "gzip" | "none";
  /** Opens the (already digest-verified) blob stream. */
  open(signal: AbortSignal): Promise<Readable>;
}

interface LayerMeta {
  diffId: string;
  sizeBytes: number;
  lastUsedMs: number;
}

export interface LayerStoreStats {
  layers: number;
  totalBytes: number;
  /** Layers unpacked by this process: a second pull of the same image adds none. */
  unpacked: number;
}

/**
 * A content-addressed store of unpacked layers, keyed by diff_id, in overlayfs form: whiteouts are character
 * devices 0/0 and opaque directories carry trusted.overlay.opaque=y, so a layer directory is a lowerdir as is.
 * Each layer is unpacked once; concurrent requests for one layer share the unpack; layers not held by a
 * running step are collected, least recently used first, when the store grows past its cap.
 */
export class LayerStore {
  /** Unpacks in flight by diff_id: shared, and stopped only when every step waiting for one has gone. */
  private readonly unpacks = new SingleFlight<string>();
  private readonly holds = new Map<string, number>();
  /** Every complete layer's meta, read from disk once at init and kept current: no step scans the store. */
  private readonly index = new Map<string, LayerMeta>();
  private totalBytes = 0;
  private unpackedCount = 0;

  constructor(
    readonly root: string,
    private readonly capBytes: number,
    private readonly logger: Logger,
  ) {}

  /** Removes half-unpacked layers a crash left behind. */
  async init(): Promise<void> {
    await rm(join(this.root, "tmp"), { recursive: true, force: true });
    await mkdir(join(this.root, "tmp"), { recursive: true });
    await mkdir(join(this.root, "layers"), { recursive: true });
    this.index.clear();
    this.totalBytes = 0;
    for (const meta of await this.readMetas()) this.indexed(meta);
  }

  /** The directory of each layer, bottom to top, unpacking what is missing. The caller must release() them. */
  async acquire(blobs: LayerBlob[], signal: AbortSignal): Promise<string[]> {
    for (const blob of blobs) if (!DIFF_ID.test(blob.diffId)) throw new Error(`invalid diff_id "${blob.diffId}"`);
    for (const blob of blobs) this.holds.set(blob.diffId, (this.holds.get(blob.diffId) ?? 0) + 1);
    try {
      return await Promise.all(blobs.map((blob) => this.layer(blob, signal)));
    } catch (error) {
      this.release(blobs.map((blob) => blob.diffId));
      throw error;
    }
  }

  release(diffIds: string[]): void {
    for (const diffId of diffIds) {
      const count = (this.holds.get(diffId) ?? 1) - 1;
      if (count > 0) this.holds.set(diffId, count);
      else this.holds.delete(diffId);
    }
  }

  async stats(): Promise<LayerStoreStats> {
    return { layers: this.index.size, totalBytes: this.totalBytes, unpacked: this.unpackedCount };
  }

  /** Removes unheld layers, least recently used first, until the store fits its cap (nothing to do while it fits). */
  async collect(): Promise<string[]> {
    if (this.totalBytes <= this.capBytes) return [];
    const metas = [...this.index.values()].sort((a, b) => a.lastUsedMs - b.lastUsedMs);
    const removed: string[] = [];
    for (const meta of metas) {
      if (this.totalBytes <= this.capBytes) break;
      if (this.holds.has(meta.diffId) || this.unpacks.has(meta.diffId)) continue;
      // Out of the index and renamed first, so that a half-removed layer is never taken for a complete one.
      this.index.delete(meta.diffId);
      this.totalBytes -= meta.sizeBytes;
      const doomed = join(this.root, "tmp", `gc-${hex(meta.diffId)}-${process.hrtime.bigint()}`);
      await rename(this.dir(meta.diffId), doomed);
      await rm(doomed, { recursive: true, force: true });
      removed.push(meta.diffId);
    }
    if (removed.length > 0) this.logger.info("collected unused layers", { removed, totalBytes: this.totalBytes, capBytes: this.capBytes });
    return removed;
  }

  private dir(diffId: string): string {
    return join(this.root, "layers", hex(diffId));
  }

  private async layer(blob: LayerBlob, signal: AbortSignal): Promise<string> {
    const dir = this.dir(blob.diffId);
    if (!this.unpacks.has(blob.diffId) && (await this.touch(blob.diffId))) return join(dir, "root");
    // touch() is asynchronous: an unpack may have started, or even finished, meanwhile (unpack then finds the
    // layer there and returns it).
    return this.unpacks.run(blob.diffId, (unpackSignal) => this.unpack(blob, unpackSignal), signal);
  }

  /**
   * Marks a complete layer used; false when the store has no such layer. Its meta on disk (which only a restart
   * reads) is rewritten when its time is more than a minute old, not on every step.
   */
  private async touch(diffId: string): Promise<boolean> {
    const meta = this.index.get(diffId);
    if (!meta) return false;
    const now = Date.now();
    const stale = now - meta.lastUsedMs > LAST_USED_WRITE_MS;
    meta.lastUsedMs = now;
    if (stale) await writeFileAtomic(join(this.dir(diffId), "meta.json"), JSON.stringify(meta));
    return true;
  }

  private indexed(meta: LayerMeta): void {
    const before = this.index.get(meta.diffId);
    if (before) this.totalBytes -= before.sizeBytes;
    this.index.set(meta.diffId, meta);
    this.totalBytes += meta.sizeBytes;
  }

  private async unpack(blob: LayerBlob, signal: AbortSignal): Promise<string> {
    const staging = join(this.root, "tmp", `${hex(blob.diffId)}-${process.hrtime.bigint()}`);
    const started = Date.now();
    const unpacker = new TarUnpacker(join(staging, "root"));
    try {
      await mkdir(join(staging, "root"), { recursive: true });
      const hash = createHash("sha256");
      const tap = new Transform({
        transform(chunk: Buffer, _encoding, callback) {
          hash.update(chunk);
          callback(null, chunk);
        },
      });
      const source = await blob.open(signal);
      if (blob.compression === "gzip") await pipeline(source, createGunzip(), tap, unpacker.extract, { signal });
      else await pipeline(source, tap, unpacker.extract, { signal });
      const actual = `sha256:${hash.digest("hex")}`;
      if (actual !== blob.diffId) throw new Error(`layer ${blob.diffId} unpacked to a tar with digest ${actual}`);
      await unpacker.finish();
      const meta: LayerMeta = { diffId: blob.diffId, sizeBytes: unpacker.bytes, lastUsedMs: Date.now() };
      await writeFile(join(staging, "meta.json"), JSON.stringify(meta));
      try {
        await rename(staging, this.dir(blob.diffId));
      } catch (error) {
        // The layer is there already (put there by an earlier process): ours is thrown away below.
        const code = (error as NodeJS.ErrnoException).code;
        const existing = code === "ENOTEMPTY" || code === "EEXIST" ? await this.readMeta(hex(blob.diffId)) : undefined;
        if (!existing) throw error;
        this.indexed(existing);
        await this.touch(blob.diffId);
        await rm(staging, { recursive: true, force: true });
        return join(this.dir(blob.diffId), "root");
      }
      this.indexed(meta);
      this.unpackedCount++;
      this.logger.info("unpacked layer", { diffId: blob.diffId, bytes: unpacker.bytes, ms: Date.now() - started });
      return join(this.dir(blob.diffId), "root");
    } catch (error) {
      await unpacker.settled();
      await rm(staging, { recursive: true, force: true });
      throw error;
    }
  }

  private async readMetas(): Promise<LayerMeta[]> {
    const names = await readdir(join(this.root, "layers")).catch(() => [] as string[]);
    const metas: LayerMeta[] = [];
    for (const name of names) {
      const meta = await this.readMeta(name);
      if (meta) metas.push(meta);
    }
    return metas;
  }

  private async readMeta(dirName: string): Promise<LayerMeta | undefined> {
    const text = await readFile(join(this.root, "layers", dirName, "meta.json"), "utf8").catch(() => undefined);
    return text === undefined ? undefined : (JSON.parse(text) as LayerMeta);
  }
}

function hex(diffId: string): string {
  return diffId.slice("sha256:".length);
}

/**
 * Writes a layer's tar entries under a root, turning OCI whiteouts into overlayfs form. Node has no mknod or
 * setxattr, so whiteouts, device nodes and opaque markers are made by mknod/setfattr once the tar has been read.
 */
class TarUnpacker {
  readonly extract = tar.extract();
  bytes = 0;
  /** The entry being written: settled before a failed unpack removes its staging directory. */
  private writing: Promise<void> = Promise.resolve();
  private readonly whiteouts: string[] = [];
  private readonly opaque: string[] = [];
  private readonly devices: { path: string; type: "c" | "b" | "p"; major: number; minor: number; mode: number; uid: number; gid: number }[] = [];
  private readonly directories: { path: string; mode: number; mtime: Date }[] = [];

  constructor(private readonly root: string) {
    this.extract.on("entry", (header, stream, next) => {
      // When the blob breaks off, the extract destroys the entry in progress with the blob's error, which the
      // unpack's pipeline reports. Unheard, that error would crash the process; and a pipeline started on the
      // destroyed entry would never settle, so the error aborts the entry's write instead.
      const broken = new AbortController();
      stream.on("error", (error: Error) => broken.abort(error));
      this.writing = this.entry(header, stream as unknown as Readable, broken.signal).then(() => next(), next);
    });
  }

  /** Directories under the root known not to be symlinks: writing through a symlink could leave the layer. */
  private readonly safeDirs = new Set<string>();

  /** The entry's path under the root ("../" cannot climb above "/"), refusing parents that are symlinks. */
  private async target(name: string): Promise<string> {
    const clean = normalize(`/${name}`).replace(/\/+$/, "");
    const parts = clean.split("/").filter(Boolean);
    let dir = this.root;
    for (const part of parts.slice(0, -1)) {
      dir = join(dir, part);
      if (this.safeDirs.has(dir)) continue;
      const info = await lstat(dir).catch(() => undefined);
      if (info?.isSymbolicLink()) throw new Error(`layer entry "${name}" goes through a symlink, which could lead out of the layer`);
      if (info) this.safeDirs.add(dir);
    }
    return join(this.root, clean);
  }

  private async entry(header: tar.Header, stream: Readable, broken: AbortSignal): Promise<void> {
    const path = await this.target(header.name);
    const base = path.slice(path.lastIndexOf("/") + 1);
    const mode = header.mode ?? 0o644;
    const uid = header.uid ?? 0;
    const gid = header.gid ?? 0;
    const mtime = header.mtime ?? new Date(0);
    if (header.type !== "file" && header.type !== "contiguous-file") stream.resume();
    if (base === ".wh..wh..opq") {
      await mkdir(dirname(path), { recursive: true });
      this.opaque.push(dirname(path));
      return;
    }
    if (base.startsWith(".wh.")) {
      await mkdir(dirname(path), { recursive: true });
      this.whiteouts.push(join(dirname(path), base.slice(".wh.".length)));
      return;
    }
    await mkdir(dirname(path), { recursive: true });
    switch (header.type) {
      case "directory":
        await mkdir(path, { recursive: true });
        await chown(path, uid, gid);
        // Modes and times of directories are set last: writing their entries would change them.
        this.directories.push({ path, mode, mtime });
        return;
      case "file":
      case "contiguous-file":
        await rm(path, { force: true, recursive: true });
        await pipeline(stream, createWriteStream(path, { mode: 0o600 }), { signal: broken });
        this.bytes += header.size ?? 0;
        await chown(path, uid, gid);
        await chmod(path, mode); // after chown, which clears setuid bits
        await utimes(path, mtime, mtime);
        return;
      case "symlink":
        await rm(path, { force: true, recursive: true });
        this.safeDirs.delete(path);
        await symlink(header.linkname ?? "", path);
        await lchown(path, uid, gid);
        await lutimes(path, mtime, mtime);
        return;
      case "link":
        await rm(path, { force: true, recursive: true });
        await link(await this.target(header.linkname ?? ""), path);
        return;
      case "character-device":
      case "block-device":
      case "fifo":
        this.devices.push({
          path,
          type: header.type === "fifo" ? "p" : header.type === "character-device" ? "c" : "b",
          major: header.devmajor ?? 0,
          minor: header.devminor ?? 0,
          mode,
          uid,
          gid,
        });
        return;
      default:
        return; // pax headers are consumed by tar-stream; other types carry no file
    }
  }

  /** Resolves once no entry is being written (its promise never rejects: next() carries its error). */
  settled(): Promise<void> {
    return this.writing;
  }

  async finish(): Promise<void> {
    for (const whiteout of this.whiteouts) {
      await rm(whiteout, { force: true, recursive: true });
      await exec("mknod", ["-m", "000", whiteout, "c", "0", "0"]);
    }
    for (const device of this.devices) {
      await rm(device.path, { force: true, recursive: true });
      await exec("mknod", [
        "-m",
        (device.mode & 0o7777).toString(8),
        device.path,
        device.type,
        ...(device.type === "p" ? [] : [String(device.major), String(device.minor)]),
      ]);
      await chown(device.path, device.uid, device.gid);
    }
    for (const dir of this.opaque) await exec("setfattr", ["-n", "trusted.overlay.opaque", "-v", "y", dir]);
    for (const dir of this.directories.reverse()) {
      await chmod(dir.path, dir.mode);
      await utimes(dir.path, dir.mtime, dir.mtime);
    }
  }
}
