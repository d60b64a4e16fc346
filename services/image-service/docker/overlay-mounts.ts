import { readFile } from "node:fs/promises";
import type { MountedLayers } from "../core/image-builder.js";

/**
 * The lower directories of the overlayfs mounts this process can see, from /proc/self/mountinfo: on the
 * step-service's host (the layer-store hand-off's condition) and mount namespace, its steps' root filesystems.
 */
export class ProcMountedLayers implements MountedLayers {
  constructor(private readonly mountinfo = "/proc/self/mountinfo") {}

  async lowerDirs(): Promise<Set<string>> {
    return overlayLowerDirs(await readFile(this.mountinfo, "utf8"));
  }
}

/** Every lowerdir of every overlay mount in a mountinfo text. */
export function overlayLowerDirs(mountinfo: string): Set<string> {
  const dirs = new Set<string>();
  for (const line of mountinfo.split("\n")) {
    // "<id> <parent> <dev> <root> <mount point> <options> [optional fields…] - <fstype> <source> <super options>"
    const separator = line.indexOf(" - ");
    if (separator < 0) continue;
    const [fsType, , superOptions = ""] = line.slice(separator + 3).split(" ");
    if (fsType !== "overlay") continue;
    for (const option of superOptions.split(",")) {
      if (!option.startsWith("lowerdir=")) continue;
      // A ":" inside a directory's name is written "\:"; mountinfo writes space, tab, newline, "\" (and
      // overlayfs "," and "=") as octal escapes.
      for (const dir of option.slice("lowerdir=".length).split(/(?<!\\):/)) {
        if (dir) dirs.add(unescapeMountinfo(dir).replace(/\\:/g, ":"));
      }
    }
  }
  return dirs;
}

function unescapeMountinfo(text: string): string {
  return text.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}
