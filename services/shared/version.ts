import { readFileSync } from "node:fs";

/**
 * steprunner's version (OPSCHAIN_VERSION), from package.json so that there is one place to change it. The path is
 * three folders up from this module and from the CLI bundle's chunks alike (dist/services/shared/, dist/services/cli-bundle/).
 */
export const STEPRUNNER_VERSION: string = JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")).version;
