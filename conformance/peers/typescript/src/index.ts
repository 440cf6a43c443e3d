// Public API of the TypeScript client core.
export * from './core';
export * from './envelope';
export { JsonValue, JsonObject, JsonError, parseJson, stringifyJson, jsonEqual } from './json';
export { applyPatch, PatchError, parsePointer, escapeToken } from './patch';
