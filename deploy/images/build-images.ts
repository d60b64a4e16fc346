// Builds steprunner's service images with steprunner's own BuildKit client (dogfood): a build context of the
// compiled services, their production dependencies and this machine's Node.js, one stage per service.
// Usage: node dist/deploy/images/build-images.js   (after deploy/local/service-base-image.sh ensure)
import { readFileSync } from "node:fs";
import { copyFile, cp, mkdir, mkdtemp, rm } from "node:fs/promises";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { BuildKitClient } from "../../services/image-service/buildkit/client.js";
import { buildDockerfile } from "../../services/image-service/buildkit/dockerfile-build.js";
import { PlainProgressRenderer, ProgressTracker } from "../../services/image-service/buildkit/progress.js";

export const SERVICES = ["context-service", "image-service", "step-service"] as const;

const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
const version: string = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version;
const stateDir = process.env.STEPRUNNER_STATE_DIR || "/var/lib/steprunner";
const registry = process.env.STEPRUNNER_REGISTRY_ADDR || "127.0.0.1:5000";
const serviceBase = process.env.STEPRUNNER_SERVICE_BASE || `${registry}/steprunner/service-base:${version}`;
const buildkitAddress = process.env.STEPRUNNER_BUILDKIT_ADDR || `docker-unix://${stateDir}/run/docker.sock`;

/** The build context: node, and app/ with package.json, dist/{gen,services} and production node_modules. */
async function stageContext(dir: string): Promise<void> {
  const app = join(dir, "app");
  await mkdir(app, { recursive: true });
  await copyFile(process.execPath, join(dir, "node"));
  for (const file of ["package.json", "package-lock.json"]) await copyFile(join(ROOT, file), join(app, file));
  for (const part of ["gen", "services"]) await cp(join(ROOT, "dist", part), join(app, "dist", part), { recursive: true });
  await promisify(execFile)("npm", ["ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], { cwd: app });
  // Native modules come already built from this checkout: the image runs this machine's Node.js, so their
  // ABI matches, and no compiler is needed in the build.
  for (const native of NATIVE_MODULES) {
    await cp(join(ROOT, "node_modules", native, "build"), join(app, "node_modules", native, "build"), { recursive: true });
  }
}

const NATIVE_MODULES = ["better-sqlite3"];

export async function buildServiceImages(log: (text: string) => void): Promise<Record<string, string>> {
  const work = await mkdtemp(join(stateDir, "tmp", "service-images-"));
  const client = new BuildKitClient(buildkitAddress);
  try {
    await stageContext(join(work, "context"));
    await mkdir(join(work, "dockerfile"));
    await copyFile(join(ROOT, "deploy/images/Dockerfile"), join(work, "dockerfile/Dockerfile"));
    const images: Record<string, string> = {};
    for (const service of SERVICES) {
      const tracker = new ProgressTracker();
      const renderer = new PlainProgressRenderer();
      const name = `steprunner/${service}:${version}`;
      const response = await buildDockerfile(
        client,
        {
          context: join(work, "context"),
          dockerfileDir: join(work, "dockerfile"),
          buildArgs: { STEPRUNNER_SERVICE_BASE: serviceBase },
          target: service,
          network: "none",
          noCache: false,
          exporter: { type: "moby", attrs: { name } },
          sessionName: `steprunner ${service} image`,
          sharedKey: "steprunner-service-images",
        },
        (status) => tracker.update(status).forEach((event) => log(renderer.render(event))),
      );
      images[service] = response["containerimage.digest"] ?? "";
      log(`${name} ${images[service]}\n`);
    }
    return images;
  } finally {
    client.close();
    await rm(work, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await mkdir(join(stateDir, "tmp"), { recursive: true });
  await buildServiceImages((text) => process.stderr.write(text));
}
