import type { ConnectRouter } from "@connectrpc/connect";
import { create, toBinary, type DescFile, type DescService, type MessageInitShape } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import * as v1 from "../../../gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../../../gen/grpc/reflection/v1alpha/reflection_pb.js";

/**
 * gRPC server reflection (v1 and the older v1alpha that many tools still ask for), so that buf curl, grpcurl
 * and other languages' tooling can call a service knowing only its address.
 */
export function registerReflection(router: ConnectRouter, services: DescService[]): void {
  const index = new DescriptorIndex(services);
  for (const api of [v1, v1alpha] as const) {
    router.service(api.ServerReflection, {
      async *serverReflectionInfo(requests: AsyncIterable<v1.ServerReflectionRequest>) {
        for await (const request of requests) {
          yield create(api.ServerReflectionResponseSchema, {
            validHost: request.host,
            originalRequest: request,
            messageResponse: index.answer(request.messageRequest as MessageRequest),
          } as MessageInitShape<typeof v1.ServerReflectionResponseSchema>);
        }
      },
    } as never); // v1 and v1alpha are the same messages under two package names
  }
}

type MessageRequest = v1.ServerReflectionRequest["messageRequest"];
// Plain init objects, so that create() makes them into v1 or v1alpha messages alike.
type MessageResponse = MessageInitShape<typeof v1.ServerReflectionResponseSchema>["messageResponse"];

const NOT_FOUND = 5;

class DescriptorIndex {
  private readonly files = new Map<string, DescFile>();
  private readonly fileBySymbol = new Map<string, DescFile>();

  constructor(private readonly services: DescService[]) {
    for (const service of services) this.addFile(service.file);
  }

  private addFile(file: DescFile): void {
    if (this.files.has(file.proto.name)) return;
    this.files.set(file.proto.name, file);
    for (const dependency of file.dependencies) this.addFile(dependency);
    for (const service of file.services) {
      this.fileBySymbol.set(service.typeName, file);
      for (const method of service.methods) this.fileBySymbol.set(`${service.typeName}.${method.name}`, file);
    }
    for (const message of file.messages) this.addMessage(message, file);
    for (const enumeration of file.enums) this.fileBySymbol.set(enumeration.typeName, file);
    for (const extension of file.extensions) this.fileBySymbol.set(extension.typeName, file);
  }

  private addMessage(message: DescFile["messages"][number], file: DescFile): void {
    this.fileBySymbol.set(message.typeName, file);
    for (const nested of message.nestedMessages) this.addMessage(nested, file);
    for (const nested of message.nestedEnums) this.fileBySymbol.set(nested.typeName, file);
  }

  answer(request: MessageRequest): MessageResponse {
    switch (request.case) {
      case "listServices":
        return {
          case: "listServicesResponse",
          value: { service: this.services.map((service) => ({ name: service.typeName })) },
        };
      case "fileByFilename":
        return this.filesResponse(this.files.get(request.value), `no file named "${request.value}"`);
      case "fileContainingSymbol":
        return this.filesResponse(this.fileBySymbol.get(request.value), `no symbol "${request.value}"`);
      case "fileContainingExtension":
        return this.error(NOT_FOUND, `no extension ${request.value.extensionNumber} of "${request.value.containingType}"`);
      case "allExtensionNumbersOfType":
        return { case: "allExtensionNumbersResponse", value: { baseTypeName: request.value } };
      default:
        return this.error(3, "the request names no reflection query");
    }
  }

  /** A file and, transitively, what it imports: clients need them all to build the descriptors. */
  private filesResponse(file: DescFile | undefined, missing: string): MessageResponse {
    if (!file) return this.error(NOT_FOUND, missing);
    const seen = new Set<string>();
    const ordered: Uint8Array[] = [];
    const visit = (current: DescFile) => {
      if (seen.has(current.proto.name)) return;
      seen.add(current.proto.name);
      ordered.push(toBinary(FileDescriptorProtoSchema, current.proto));
      for (const dependency of current.dependencies) visit(dependency);
    };
    visit(file);
    return { case: "fileDescriptorResponse", value: { fileDescriptorProto: ordered } };
  }

  private error(errorCode: number, errorMessage: string): MessageResponse {
    return { case: "errorResponse", value: { errorCode, errorMessage } };
  }
}
