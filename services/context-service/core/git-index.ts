import { createHash } from "node:crypto";

export interface IndexEntry {
  /** The path in the repository, as git stores it (bytes, '/' separated). */
  path: Buffer<ArrayBufferLike>;
  /** Git's mode: 0o100644, 0o100755, 0o120000 (symlink) or 0o160000 (submodule). */
  mode: number;
  /** The object id, 40 hex digits. */
  oid: string;
  /** Present in the index but deliberately absent from the working tree (export-ignore). */
  skipWorktree: boolean;
}

const EXTENDED_FLAG = 0x4000;
const SKIP_WORKTREE_FLAG = 0x4000;

/**
 * A git index (DIRC) for a working tree that is exactly the commit. Stat data is zeroed, so it depends on the
 * commit alone; git sees the mismatch with the extracted files, hashes them once and finds them unchanged.
 * Version 2, or version 3 when an entry needs the skip-worktree flag (which lives in the extended flags).
 */
export function buildIndex(entries: IndexEntry[]): Buffer {
  const sorted = [...entries].sort((a, b) => Buffer.compare(a.path, b.path));
  const extended = sorted.some((entry) => entry.skipWorktree);
  const header = Buffer.alloc(12);
  header.write("DIRC", 0, "latin1");
  header.writeUInt32BE(extended ? 3 : 2, 4);
  header.writeUInt32BE(sorted.length, 8);
  const parts = [header];
  for (const entry of sorted) {
    // Only entries with the extended bit carry the two extended-flag bytes.
    const fixed = entry.skipWorktree ? 64 : 62;
    // Each entry is NUL-padded to a multiple of 8 bytes, with at least one NUL ending the path.
    const length = (fixed + entry.path.length + 8) & ~7;
    const buffer = Buffer.alloc(length);
    // ctime, mtime, dev and ino (bytes 0-23) stay zero.
    buffer.writeUInt32BE(entry.mode, 24);
    // uid, gid and size (bytes 28-39) stay zero.
    Buffer.from(entry.oid, "hex").copy(buffer, 40);
    let flags = Math.min(entry.path.length, 0xfff);
    if (entry.skipWorktree) flags |= EXTENDED_FLAG;
    buffer.writeUInt16BE(flags, 60);
    if (entry.skipWorktree) buffer.writeUInt16BE(SKIP_WORKTREE_FLAG, 62);
    entry.path.copy(buffer, fixed);
    parts.push(buffer);
  }
  const body = Buffer.concat(parts);
  return Buffer.concat([body, createHash("sha1").update(body).digest()]);
}
