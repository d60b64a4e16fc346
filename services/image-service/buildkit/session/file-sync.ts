import { type BigIntStats, createReadStream, readFileSync } from "node:fs";
import { lstat, readdir, readlink } from "node:fs/promises";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { type Packet, Packet_PacketType as PacketType, PacketSchema, type Stat, StatSchema } from "../../../../gen/fsutil/types/wire_pb.js";
import type { BidiCall, RepeatedHeaders } from "./grpc-server.js";
import { PathPatterns } from "./path-patterns.js";

/** Go's os.FileMode type bits, which fsutil puts on the wire. */
const GO_MODE_DIR = 0x80000000;
const GO_MODE_SYMLINK = 0x08000000;
/** Well under gRPC's default 4 MB message limit on the daemon's side, and few enough messages per file. */
const DATA_CHUNK_BYTES = 1024 * 1024;
/**
 * Files up to this size are read in one synchronous call: most of a repository's files are small, and one
 * stream per file (open, read, close on the thread pool) cost more than the bytes.
 */
const SMALL_FILE_BYTES = 256 * 1024;

/** Counts what a DiffCopy sent, so that callers (and tests) can see what BuildKit asked for again. */
export interface TransferObserver {
  fileSent(dirName: string, path: string, bytes: number): void;
}

interface Entry {
  stat: Stat;
  absolutePath: string;
}

/**
 * A local source: a directory, or one made of named entries that lie elsewhere (directories or files), as a
 * build context assembled from parts that change at different rates without copying any of them.
 */
export type LocalSource = string | { entries: Record<string, string> };

/**
 * The sending side of fsutil's DiffCopy: lists a local directory as STAT packets (depth first, names sorted
 * byte-wise, directories before their children, then an empty STAT), answers each REQ with the file's DATA
 * and an empty DATA, and ends with FIN when the daemon says FIN.
 */
export async function sendDirectory(call: BidiCall, dirName: string, source: LocalSource, observer?: TransferObserver): Promise<void> {
  const include = new PathPatterns([...syncOption(call.headers, "include-patterns"), ...syncOption(call.headers, "followpaths")]);
  const exclude = new PathPatterns(syncOption(call.headers, "exclude-patterns"));
  const top = typeof source === "string" ? await listDirectory(source) : Object.entries(source.entries).map(([name, absolutePath]) => ({ name, absolutePath }));
  const entries = await walk(top, "", include, exclude);
  const send = (packet: Packet) => call.send(toBinary(PacketSchema, packet));

  const listing = (async () => {
    for (const entry of entries) await send(create(PacketSchema, { type: PacketType.PACKET_STAT, stat: entry.stat }));
    await send(create(PacketSchema, { type: PacketType.PACKET_STAT }));
  })();
  // Its failure (the daemon gone mid-listing) is thrown where it is awaited, below; until then it must not count
  // as unhandled, which would end the process.
  listing.catch(() => {});

  // REQs can arrive before the listing is done; answer them in order once it is.
  for await (const bytes of call.messages) {
    const packet = fromBinary(PacketSchema, bytes);
    await listing;
    switch (packet.type) {
      case PacketType.PACKET_REQ: {
        const entry = entries[packet.ID];
        if (!entry) throw new ConnectError(`BuildKit asked for file #${packet.ID}, which was never listed`, Code.InvalidArgument);
        let sent = 0;
        const chunks =
          entry.stat.size <= SMALL_FILE_BYTES
            ? [readFileSync(entry.absolutePath)]
            : createReadStream(entry.absolutePath, { highWaterMark: DATA_CHUNK_BYTES, signal: call.signal });
        for await (const chunk of chunks) {
          sent += (chunk as Buffer).length;
          if ((chunk as Buffer).length > 0) await call.send([dataPacketHead(packet.ID, (chunk as Buffer).length), chunk as Buffer]);
        }
        await send(create(PacketSchema, { type: PacketType.PACKET_DATA, ID: packet.ID }));
        observer?.fileSent(dirName, entry.stat.path, sent);
        break;
      }
      case PacketType.PACKET_FIN:
        await send(create(PacketSchema, { type: PacketType.PACKET_FIN }));
        return;
      case PacketType.PACKET_ERR:
        throw new ConnectError(`BuildKit failed receiving "${dirName}": ${Buffer.from(packet.data).toString("utf8")}`, Code.Aborted);
      default:
        throw new ConnectError(`unexpected DiffCopy packet type ${packet.type} from BuildKit`, Code.InvalidArgument);
    }
  }
  await listing;
}

/**
 * The values of one of DiffCopy's option headers. When a value is not ASCII, which a header cannot carry, BuildKit
 * escapes all of that option's values as Go's url.QueryEscape does and says so in a "<name>-encoded" header.
 */
export function syncOption(headers: RepeatedHeaders, name: string): string[] {
  const values = headers.get(name) ?? [];
  if (!isGoTrue(headers.get(`${name}-encoded`)?.[0])) return values;
  return values.map((value) => {
    try {
      return decodeURIComponent(value.replaceAll("+", " "));
    } catch {
      throw new ConnectError(`BuildKit sent a ${name} value that is flagged as escaped but is not: ${JSON.stringify(value)}`, Code.InvalidArgument);
    }
  });
}

/** The spellings of true that Go's strconv.ParseBool accepts. */
function isGoTrue(value: string | undefined): boolean {
  return value !== undefined && ["1", "t", "T", "true", "TRUE", "True"].includes(value);
}

async function listDirectory(dir: string): Promise<Array<{ name: string; absolutePath: string }>> {
  return (await readdir(dir)).map((name) => ({ name, absolutePath: join(dir, name) }));
}

async function walk(children: Array<{ name: string; absolutePath: string }>, relative: string, include: PathPatterns, exclude: PathPatterns): Promise<Entry[]> {
  const sorted = [...children].sort((a, b) => Buffer.compare(Buffer.from(a.name), Buffer.from(b.name)));
  const entries: Entry[] = [];
  for (const { name, absolutePath } of sorted) {
    const path = relative ? `${relative}/${name}` : name;
    const info = await lstat(absolutePath, { bigint: true });
    const included = include.empty || include.matches(path);
    const excluded = exclude.matches(path);
    const selected = included && !excluded;
    if (info.isDirectory()) {
      // A directory not selected itself is still walked when a pattern may select something below it, and sent
      // as the parent of what it holds, as fsutil does.
      const mayHoldSelected = (included || include.mayMatchBelow(path)) && (!excluded || exclude.exceptionMayMatchBelow(path));
      if (!selected && !mayHoldSelected) continue;
      const below = await walk(await listDirectory(absolutePath), path, include, exclude);
      if (!selected && below.length === 0) continue;
      entries.push({ stat: statOf(path, info, GO_MODE_DIR, ""), absolutePath }, ...below);
    } else if (selected && (info.isFile() || info.isSymbolicLink())) {
      const linkname = info.isSymbolicLink() ? await readlink(absolutePath) : "";
      entries.push({ stat: statOf(path, info, info.isSymbolicLink() ? GO_MODE_SYMLINK : 0, linkname), absolutePath });
    }
  }
  return entries;
}

/**
 * The protobuf encoding of a DATA packet up to its data (type = 1, ID = 3, data = 4): the data follows as is, so
 * file content is never copied into a message.
 */
export function dataPacketHead(id: number, length: number): Buffer {
  // proto3 leaves a zero ID out, as protobuf-es would.
  return Buffer.from([0x08, PacketType.PACKET_DATA, ...(id ? [0x18, ...varint(id)] : []), 0x22, ...varint(length)]);
}

function varint(value: number): number[] {
  const bytes: number[] = [];
  let rest = value >>> 0;
  while (rest >= 0x80) {
    bytes.push((rest & 0x7f) | 0x80);
    rest >>>= 7;
  }
  bytes.push(rest);
  return bytes;
}

function statOf(path: string, info: BigIntStats, typeBits: number, linkname: string): Stat {
  return create(StatSchema, {
    path,
    mode: (typeBits | (Number(info.mode) & 0o7777)) >>> 0,
    uid: Number(info.uid),
    gid: Number(info.gid),
    size: info.isFile() ? info.size : 0n,
    modTime: info.mtimeNs,
    linkname,
  });
}
