// Runs a wasm32-wasip1 program (the instruction-count harness, examples/instr.rs, built for
// wasm32-wasip1) under Node.js's WASI: V8, the engine Envoy's Wasm filter runs in, so the
// relative cost of two builds of the same code can be compared without Envoy.
//   node bench/node_wasi.mjs <program.wasm> [args...]
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import { argv, exit } from "node:process";

const [file, ...args] = argv.slice(2);
if (!file) {
  console.error("usage: node bench/node_wasi.mjs <program.wasm> [args...]");
  exit(2);
}
const wasi = new WASI({ version: "preview1", args: [file, ...args], env: {}, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(file));
// The library links the proxy-wasm host calls (module "env"); the harness never makes one, so
// each is a stub that fails loudly if it ever is.
const imports = wasi.getImportObject();
imports.env = {};
for (const imp of WebAssembly.Module.imports(module)) {
  if (imp.module === "env" && imp.kind === "function") {
    imports.env[imp.name] = () => {
      throw new Error(`host call ${imp.name} is not available outside Envoy`);
    };
  }
}
const instance = await WebAssembly.instantiate(module, imports);
// The module also exports `_initialize` (the library's reactor entry), which WASI.start refuses
// next to `_start`: hand it the command's exports only.
const { _start, memory } = instance.exports;
exit(wasi.start({ exports: { _start, memory } }));
