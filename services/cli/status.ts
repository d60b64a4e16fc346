import { createClient } from "@connectrpc/connect";
import { ConnectError } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { type CacheCollectionRule, ImageService } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { StepService } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { formatBytes } from "../shared/build-progress.js";
import { serviceTransport } from "../shared/client/transport.js";
import { type Command, clientSecurity, serviceAddressOptions } from "./command.js";

const CALL_TIMEOUT_MS = 10_000;

interface ServiceHealth {
  name: string;
  address: string;
  status: string;
  ok: boolean;
}

export const statusCommand: Command = {
  usage: "[--json]",
  options: {
    ...serviceAddressOptions,
    json: { type: "boolean", description: "print one JSON object instead of text" },
  },
  async run(values) {
    const addresses = {
      "context-service": String(values["context-addr"]),
      "image-service": String(values["image-addr"]),
      "step-service": String(values["step-addr"]),
    };
    const transports = Object.fromEntries(Object.entries(addresses).map(([name, address]) => [name, serviceTransport(address, clientSecurity())]));
    try {
      const health = await Promise.all(Object.entries(addresses).map(([name, address]) => checkHealth(name, address, transports[name]!.transport)));
      const image = createClient(ImageService, transports["image-service"]!.transport);
      const step = createClient(StepService, transports["step-service"]!.transport);
      const [builder, runtime] = await Promise.all([
        image.getBuilderInfo({}, { timeoutMs: CALL_TIMEOUT_MS }).catch((error: unknown) => ConnectError.from(error)),
        step.getRuntimeInfo({}, { timeoutMs: CALL_TIMEOUT_MS }).catch((error: unknown) => ConnectError.from(error)),
      ]);
      // An image-service from before several daemons lists none: its one daemon is in the first fields.
      const daemons =
        builder instanceof ConnectError
          ? []
          : builder.buildkits.length > 0
            ? builder.buildkits
            : [{ address: builder.buildkitAddress, version: builder.buildkitVersion, workers: builder.workers, problem: "" }];
      const ok =
        health.every((service) => service.ok) &&
        !(builder instanceof ConnectError) &&
        daemons.every((daemon) => daemon.problem === "" && daemon.workers.length > 0) &&
        builder.registryApiVersion !== "" &&
        !(runtime instanceof ConnectError);

      if (values.json) {
        console.log(JSON.stringify({ ok, services: health, builder: plain(builder), runtime: plain(runtime) }, bigintAsText, 2));
        return ok ? 0 : 1;
      }
      for (const service of health) console.log(`${service.name.padEnd(16)} ${service.address.padEnd(22)} ${service.status}`);
      if (builder instanceof ConnectError) {
        console.log(`${"BuildKit".padEnd(16)} unknown: ${builder.message}`);
      } else {
        for (const daemon of daemons) {
          if (daemon.problem) {
            console.log(`${"BuildKit".padEnd(16)} ${daemon.address} not answering: ${daemon.problem}`);
            continue;
          }
          console.log(`${"BuildKit".padEnd(16)} ${daemon.address} (version ${daemon.version || "not reported: no Info call before v0.11"})`);
          if (daemon.workers.length === 0) console.log(`${"".padEnd(16)} no workers`);
          for (const worker of daemon.workers) {
            console.log(`${"  worker".padEnd(16)} ${worker.id}: ${worker.platforms.join(", ")}`);
            console.log(`${"  cache gc".padEnd(16)} ${describeCacheCollection(worker.cacheCollection)}`);
          }
        }
        console.log(`${"registry".padEnd(16)} ${builder.registryAddress.padEnd(22)} ${builder.registryApiVersion || "not answering"}`);
        console.log(`${"base runner".padEnd(16)} ${builder.defaultBaseRunner}`);
      }
      if (runtime instanceof ConnectError) {
        console.log(`${"runc".padEnd(16)} unknown: ${runtime.message}`);
      } else {
        console.log(`${"runc".padEnd(16)} ${runtime.runcVersion} (OCI spec ${runtime.ociSpecVersion}, cgroup v${runtime.cgroupVersion})`);
        console.log(`${"steps".padEnd(16)} ${runtime.runningSteps} running, ${runtime.queuedSteps} queued, at most ${runtime.maxConcurrentSteps} at once`);
      }
      return ok ? 0 : 1;
    } finally {
      for (const transport of Object.values(transports)) transport.close();
    }
  },
};

async function checkHealth(name: string, address: string, transport: Parameters<typeof createClient>[1]): Promise<ServiceHealth> {
  try {
    const response = await createClient(Health, transport).check({ service: "" }, { timeoutMs: CALL_TIMEOUT_MS });
    return { name, address, status: ServingStatus[response.status], ok: response.status === ServingStatus.SERVING };
  } catch (error) {
    return { name, address, status: `unreachable: ${ConnectError.from(error).message}`, ok: false };
  }
}

/** A worker's garbage collection of its build cache, in a few words: its rules and the size it keeps the cache to. */
function describeCacheCollection(rules: CacheCollectionRule[]): string {
  if (rules.length === 0) return "off: the build cache grows without bound";
  // A rule collects once the cache passes its max_used_bytes (v0.13 and later), else its reserved_bytes.
  const bound = rules.reduce((largest, rule) => {
    const ruleBound = rule.maxUsedBytes > 0n ? rule.maxUsedBytes : rule.reservedBytes;
    return ruleBound > largest ? ruleBound : largest;
  }, 0n);
  return `${rules.length} rule${rules.length === 1 ? "" : "s"}${bound > 0n ? `, the cache kept to about ${formatBytes(bound)}` : ""}`;
}

function plain(value: unknown): unknown {
  if (value instanceof ConnectError) return { error: value.message, code: value.code };
  return value;
}

function bigintAsText(key: string, value: unknown): unknown {
  if (key === "$typeName") return undefined;
  return typeof value === "bigint" ? value.toString() : value;
}
