import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { overlayLowerDirs } from "../../services/image-service/docker/overlay-mounts.js";

describe("overlay lower directories in mountinfo", () => {
  it("lists each overlay mount's lower directories, unescaped, and ignores other filesystems", () => {
    const mountinfo = [
      "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro",
      "530 22 0:52 / /var/lib/steprunner/step/steps/s1/rootfs rw,relatime shared:290 - overlay overlay rw,lowerdir=/var/lib/steprunner/docker/overlay2/b/diff:/var/lib/steprunner/docker/overlay2/a/diff,upperdir=/var/lib/steprunner/step/steps/s1/upper,workdir=/var/lib/steprunner/step/steps/s1/work",
      "531 22 0:53 / /mnt/x rw shared:291 master:3 - overlay overlay rw,lowerdir=/odd\\040dir/with\\:colon,upperdir=/u,workdir=/w",
      "",
    ].join("\n");
    assert.deepEqual(
      [...overlayLowerDirs(mountinfo)],
      ["/var/lib/steprunner/docker/overlay2/b/diff", "/var/lib/steprunner/docker/overlay2/a/diff", "/odd dir/with:colon"],
    );
  });

  it("reads this machine's /proc/self/mountinfo without failing", async () => {
    const { ProcMountedLayers } = await import("../../services/image-service/docker/overlay-mounts.js");
    assert.ok((await new ProcMountedLayers().lowerDirs()) instanceof Set);
  });
});
