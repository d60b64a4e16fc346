import { readFileSync } from "node:fs";
import { mkdir, readFile, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Handoff } from "./model.js";
import { writeFileAtomic } from "../../shared/files/atomic-write.js";
import { keepRecent } from "../../shared/recent-entries.js";

/** What was built for a content key, so that the same inputs get the same image without a solve. */
export interface ReuseRecord {
  contentKey: string;
  imageId: string;
  /** Builds in one scope share the context snapshot and the registry cache (see cacheScope). */
  cacheScope: string;
  /** The registry reference ("host/repo@sha256:…") once pushed. */
  reference?: string;
  manifestDigest?: string;
  handoffs: Handoff[];
  builtAt: number;
  buildDurationMs: number;
}

/**
 * How precisely a hand-off's time is kept: prune holds an image for hours after it (inUseHoldMs), so a step
 * reusing the image needs no write when the last one is this recent.
 */
const HANDED_OVER_RESOLUTION_MS = 60_000;
const HANDED_OVER_REMEMBERED = 1024;

/** Records on disk, one JSON file per content key, written atomically. */
export class ReuseRecords {
  /** The hand-off times this process wrote, by content key. */
  private readonly handedOver = new Map<string, number>();

  constructor(private readonly dir: string) {}

  async get(contentKey: string): Promise<ReuseRecord | undefined> {
    try {
      // Synchronous: a record is a few hundred bytes, read in microseconds, where each of the thread pool's
      // round trips (open, read, close) costs a tenth of a millisecond or more on a busy host.
      return JSON.parse(readFileSync(this.path(contentKey), "utf8")) as ReuseRecord;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw error;
    }
  }

  async put(record: ReuseRecord): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    await writeFileAtomic(this.path(record.contentKey), JSON.stringify(record));
  }

  async remove(contentKey: string): Promise<void> {
    this.handedOver.delete(contentKey);
    await rm(this.path(contentKey), { force: true });
    await rm(this.handedOverPath(contentKey), { force: true });
  }

  /**
   * Notes that the image was just handed over in dockerd's layer store (a step is about to mount its
   * directories). Kept beside the record, not in it, so that it never races a push's update of the record.
   */
  async markHandedOver(contentKey: string, at: number): Promise<void> {
    const written = this.handedOver.get(contentKey);
    if (written !== undefined && at - written < HANDED_OVER_RESOLUTION_MS) return;
    await mkdir(this.dir, { recursive: true });
    await writeFileAtomic(this.handedOverPath(contentKey), String(at));
    keepRecent(this.handedOver, contentKey, at, HANDED_OVER_REMEMBERED);
  }

  /** When the image was last handed over in dockerd's layer store, if ever. */
  async handedOverAt(contentKey: string): Promise<number | undefined> {
    const text = await readFile(this.handedOverPath(contentKey), "utf8").catch((error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") return undefined;
      throw error;
    });
    return text === undefined ? undefined : Number(text);
  }

  /** The last image pushed for a cache scope: where a BuildKit without local cache imports layers from. */
  async cacheSource(scope: string): Promise<string | undefined> {
    try {
      return (JSON.parse(await readFile(join(this.dir, "cache-sources", `${scope}.json`), "utf8")) as { reference: string }).reference;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw error;
    }
  }

  async setCacheSource(scope: string, reference: string): Promise<void> {
    const dir = join(this.dir, "cache-sources");
    await mkdir(dir, { recursive: true });
    await writeFileAtomic(join(dir, `${scope}.json`), JSON.stringify({ reference }));
  }

  async list(): Promise<ReuseRecord[]> {
    const names = await readdir(this.dir).catch(() => [] as string[]);
    const records = await Promise.all(names.filter((name) => name.endsWith(".json")).map((name) => this.get(name.slice(0, -5))));
    return records.filter((record): record is ReuseRecord => record !== undefined);
  }

  private path(contentKey: string): string {
    return join(this.dir, `${contentKey.replace(/^sha256:/, "")}.json`);
  }

  private handedOverPath(contentKey: string): string {
    return join(this.dir, `${contentKey.replace(/^sha256:/, "")}.handed-over`);
  }
}
