import type { ServiceImpl } from "@connectrpc/connect";
import { ContextService } from "../../../gen/steprunner/context/v1/context_service_pb.js";
import type { HttpHandler } from "../../shared/server/serve.js";
import type { DefaultDockerfile } from "../core/default-dockerfile.js";

/** The Connect adapter of ContextService. */
export function contextServiceAdapter(dockerfile: DefaultDockerfile): Partial<ServiceImpl<typeof ContextService>> {
  return {
    getDefaultDockerfile() {
      return { dockerfile: dockerfile.text, version: dockerfile.version, digest: dockerfile.digest };
    },
  };
}

/** GET /downloads/Dockerfile: the default Dockerfile as text, as the seed's API server serves it. */
export function downloadDockerfileHandler(dockerfile: DefaultDockerfile): HttpHandler {
  const etag = `"${dockerfile.digest}"`;
  return (req, res) => {
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain" });
      res.end("only GET and HEAD are allowed\n");
      return;
    }
    if (req.headers["if-none-match"] === etag) {
      res.writeHead(304, { etag });
      res.end();
      return;
    }
    res.writeHead(200, {
      "content-type": "text/plain; charset=utf-8",
      "content-disposition": 'attachment; filename="Dockerfile"',
      etag,
      "content-length": Buffer.byteLength(dockerfile.text),
    });
    if (req.method === "HEAD") res.end();
    else res.end(dockerfile.text);
  };
}
