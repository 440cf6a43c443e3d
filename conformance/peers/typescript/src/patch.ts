// RFC 6902 JSON Patch with the strictness rules of PROTOCOL.md §7.2–§7.4 and the
// client limits of §15 (mirror depth, copy amplification).

import {
  JsonValue, JsonObject, JsonError, parseJson, isObject, jsonEqual, cloneJson, depthOf,
  countValues, utf8Length,
} from './json';

export class PatchError extends Error {}

export interface PatchLimits {
  /** Mirror depth (§15): the view's own object is level 1. */
  maxDepth: number;
  /** Minimum copy-amplification budget (§15): max(this, patch length in bytes). */
  minCopyBudget: number;
}

export const DEFAULT_PATCH_LIMITS: PatchLimits = { maxDepth: 127, minCopyBudget: 4096 };

const OPS = new Set(['add', 'remove', 'replace', 'move', 'copy', 'test']);
/** Members each operation uses (PC3); a duplicate of one of these fails the patch. */
const USED_MEMBERS: Record<string, string[]> = {
  add: ['op', 'path', 'value'],
  remove: ['op', 'path'],
  replace: ['op', 'path', 'value'],
  move: ['op', 'path', 'from'],
  copy: ['op', 'path', 'from'],
  test: ['op', 'path', 'value'],
};

/** Parses a JSON Pointer (PT1, PT2) into decoded tokens. */
export function parsePointer(p: string): string[] {
  if (p === '') return [];
  if (p[0] !== '/') throw new PatchError(`pointer ${JSON.stringify(p)} does not start with '/'`);
  return p.slice(1).split('/').map((t) => {
    for (let i = 0; i < t.length; i++) {
      if (t[i] === '~' && t[i + 1] !== '0' && t[i + 1] !== '1') {
        throw new PatchError(`invalid '~' escape in ${JSON.stringify(p)}`);
      }
    }
    return t.replace(/~1/g, '/').replace(/~0/g, '~');
  });
}

/** Encodes one member name as a pointer token (§6.4). */
export function escapeToken(name: string): string {
  return name.replace(/~/g, '~0').replace(/\//g, '~1');
}

const INDEX = /^(0|[1-9][0-9]*)$/;

/** PT3: an array index token, or -1 for a token that is not one. */
function arrayIndex(tok: string): number {
  if (!INDEX.test(tok)) return -1;
  const n = Number(tok);
  return Number.isSafeInteger(n) ? n : Number.MAX_SAFE_INTEGER; // huge: out of range anyway
}

type Container = JsonValue[] | JsonObject;

/** Resolves every token but the last (PT5); returns the parent container. */
function parentOf(doc: JsonValue, toks: string[]): Container {
  let cur: JsonValue = doc;
  for (let i = 0; i < toks.length - 1; i++) {
    cur = child(cur, toks[i]);
  }
  if (!Array.isArray(cur) && !isObject(cur)) throw new PatchError('parent is not a container');
  return cur;
}

function child(cur: JsonValue, tok: string): JsonValue {
  if (Array.isArray(cur)) {
    const i = arrayIndex(tok); // '-' is refused here (PT4): it names no element
    if (i < 0 || i >= cur.length) throw new PatchError(`no element ${JSON.stringify(tok)}`);
    return cur[i];
  }
  if (isObject(cur)) {
    if (!cur.has(tok)) throw new PatchError(`no member ${JSON.stringify(tok)}`);
    return cur.get(tok) as JsonValue;
  }
  throw new PatchError('token applied to a scalar');
}

function get(doc: JsonValue, toks: string[]): JsonValue {
  let cur = doc;
  for (const t of toks) cur = child(cur, t);
  return cur;
}

class Doc {
  constructor(public root: JsonValue, readonly maxDepth: number) {}

  /**
   * Mirror depth (§15), checked at every placement, so that no intermediate state nests
   * deeper than the limit either (the reference refuses those too). A value placed under
   * k tokens has its own containers from level k + 1 on.
   */
  private checkDepth(toks: string[], value: JsonValue): void {
    if (toks.length + depthOf(value) > this.maxDepth) {
      throw new PatchError('the patch would nest the mirror deeper than its depth limit');
    }
  }

  add(toks: string[], value: JsonValue): void {
    this.checkDepth(toks, value);
    if (toks.length === 0) {
      this.root = value;
      return;
    }
    const parent = parentOf(this.root, toks);
    const last = toks[toks.length - 1];
    if (Array.isArray(parent)) {
      if (last === '-') {
        parent.push(value);
        return;
      }
      const i = arrayIndex(last);
      if (i < 0 || i > parent.length) throw new PatchError(`bad array index ${JSON.stringify(last)}`);
      parent.splice(i, 0, value);
    } else {
      parent.set(last, value);
    }
  }

  remove(toks: string[]): JsonValue {
    if (toks.length === 0) throw new PatchError('removing the root leaves no object');
    const parent = parentOf(this.root, toks);
    const last = toks[toks.length - 1];
    if (Array.isArray(parent)) {
      const i = arrayIndex(last);
      if (i < 0 || i >= parent.length) throw new PatchError(`bad array index ${JSON.stringify(last)}`);
      return parent.splice(i, 1)[0];
    }
    if (!parent.has(last)) throw new PatchError(`no member ${JSON.stringify(last)}`);
    const v = parent.get(last) as JsonValue;
    parent.delete(last);
    return v;
  }

  replace(toks: string[], value: JsonValue): void {
    this.checkDepth(toks, value);
    if (toks.length === 0) {
      this.root = value;
      return;
    }
    const parent = parentOf(this.root, toks);
    const last = toks[toks.length - 1];
    if (Array.isArray(parent)) {
      const i = arrayIndex(last);
      if (i < 0 || i >= parent.length) throw new PatchError(`bad array index ${JSON.stringify(last)}`);
      parent[i] = value;
    } else {
      if (!parent.has(last)) throw new PatchError(`no member ${JSON.stringify(last)}`);
      parent.set(last, value);
    }
  }
}

function isProperPrefix(a: string[], b: string[]): boolean {
  if (a.length >= b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function member(op: JsonObject, name: string): string {
  const v = op.get(name);
  if (typeof v !== 'string') throw new PatchError(`'${name}' missing or not a string`);
  return v;
}

function valueOf(op: JsonObject): JsonValue {
  if (!op.has('value')) throw new PatchError("'value' missing");
  return op.get('value') as JsonValue;
}

/**
 * Applies patch text to a mirror, atomically (PC2): returns the new view, or throws
 * PatchError and leaves `mirror` untouched. `bookmark` is true when base = version
 * (PC4: then only an empty operation array applies).
 */
export function applyPatch(
  mirror: JsonObject,
  patchJson: string,
  bookmark: boolean,
  limits: PatchLimits = DEFAULT_PATCH_LIMITS,
): JsonObject {
  let ops: JsonValue;
  const dups = new WeakMap<JsonObject, Set<string>>();
  try {
    // The patch text's own nesting is bounded by the mirror-depth limit (§15).
    ops = parseJson(patchJson, { maxDepth: limits.maxDepth, duplicates: dups });
  } catch (e) {
    if (e instanceof JsonError) throw new PatchError(`patch is not JSON: ${e.message}`);
    throw e;
  }
  if (!Array.isArray(ops)) throw new PatchError('patch is not an array');
  if (bookmark && ops.length !== 0) throw new PatchError('a patch with base = version must be empty (PC4)');
  if (ops.length === 0) return mirror;

  const copyBudget = Math.max(limits.minCopyBudget, utf8Length(patchJson));
  let copied = 0;
  const doc = new Doc(cloneJson(mirror), limits.maxDepth);
  for (const op of ops) {
    if (!isObject(op)) throw new PatchError('operation is not an object');
    const name = op.get('op');
    if (typeof name !== 'string' || !OPS.has(name)) throw new PatchError('unknown or missing op');
    // J3 lets a receiver refuse duplicate member names; like the reference, an operation
    // refuses duplicates of the members it uses and ignores the rest (PC3).
    const d = dups.get(op);
    if (d) for (const k of USED_MEMBERS[name]) if (d.has(k)) throw new PatchError(`duplicate '${k}'`);
    const path = parsePointer(member(op, 'path'));
    switch (name) {
      case 'add':
        doc.add(path, valueOf(op));
        break;
      case 'remove':
        doc.remove(path);
        break;
      case 'replace':
        doc.replace(path, valueOf(op));
        break;
      case 'test': {
        const v = valueOf(op);
        if (!jsonEqual(get(doc.root, path), v)) throw new PatchError('test failed');
        break;
      }
      case 'move': {
        const fromText = member(op, 'from');
        const from = parsePointer(fromText);
        get(doc.root, from); // from MUST exist
        if (fromText === member(op, 'path')) break; // no-op
        if (isProperPrefix(from, path)) throw new PatchError('cannot move a value into its own child');
        const v = doc.remove(from);
        doc.add(path, v);
        break;
      }
      case 'copy': {
        const from = parsePointer(member(op, 'from'));
        const v = cloneJson(get(doc.root, from));
        copied += countValues(v);
        if (copied > copyBudget) throw new PatchError('copy amplification limit exceeded');
        doc.add(path, v);
        break;
      }
    }
  }
  const result = doc.root;
  if (!isObject(result)) throw new PatchError('the result is not a JSON object');
  return result;
}
