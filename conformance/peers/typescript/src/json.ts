// JSON per PROTOCOL.md §6, for JavaScript.
//
// JSON.parse is not enough:
//  - it reads every number as binary64, so integers above 2^53 lose their value (J8, J10);
//  - it reads 1e400 as Infinity instead of refusing it (J9);
//  - it accepts escaped lone surrogates ("\ud800"), which J2 lets a receiver refuse
//    (the reference does) and which could never be re-encoded as UTF-8;
//  - it has no depth limit (§15 mirror depth);
//  - it cannot report duplicate member names (J3);
//  - plain objects give "__proto__" special meaning on assignment.
//
// Value model: null | boolean | string | number | bigint | JsonValue[] | JsonObject (a Map).
//  - An *integer* literal (J7: 0 or -?[1-9][0-9]*) within [-2^63, 2^64-1] is exact: a
//    number when |n| <= 2^53-1, a bigint otherwise. Outside that range it is read as the
//    nearest binary64 (as J8 says the reference does).
//  - Every other number literal is a binary64 `number`; -0 keeps its sign (J9).
//  - Objects are Maps (member order kept, no prototype hazards).

export type JsonValue = null | boolean | string | number | bigint | JsonValue[] | JsonObject;
export type JsonObject = Map<string, JsonValue>;

export class JsonError extends Error {}

export interface ParseOptions {
  /** Maximum nesting of arrays/objects (the outermost container is level 1). */
  maxDepth?: number;
  /** Refuse escaped or raw lone surrogates (J2). Default true. */
  rejectLoneSurrogates?: boolean;
  /** If given, objects with duplicate member names are recorded here with the duplicated names. */
  duplicates?: WeakMap<JsonObject, Set<string>>;
  /** If given, the [start, end) offsets of every array and object in the text. */
  spans?: WeakMap<object, [number, number]>;
}

const I64_MIN = -(2n ** 63n);
const U64_MAX = 2n ** 64n - 1n;
const SAFE = BigInt(Number.MAX_SAFE_INTEGER);

export function parseJson(text: string, opts: ParseOptions = {}): JsonValue {
  const p = new Parser(text, opts);
  p.ws();
  const v = p.value(0);
  p.ws();
  if (p.i !== text.length) p.fail('trailing characters');
  return v;
}

class Parser {
  i = 0;
  readonly maxDepth: number;
  readonly strictSurrogates: boolean;
  constructor(readonly s: string, readonly opts: ParseOptions) {
    this.maxDepth = opts.maxDepth ?? Infinity;
    this.strictSurrogates = opts.rejectLoneSurrogates ?? true;
  }
  fail(why: string): never {
    throw new JsonError(`${why} at offset ${this.i}`);
  }
  ws(): void {
    const s = this.s;
    while (this.i < s.length) {
      const c = s.charCodeAt(this.i);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) this.i++;
      else break;
    }
  }
  value(depth: number): JsonValue {
    const s = this.s;
    if (this.i >= s.length) this.fail('unexpected end of input');
    const c = s[this.i];
    switch (c) {
      case '{':
      case '[': {
        const start = this.i;
        const v = c === '{' ? this.object(depth + 1) : this.array(depth + 1);
        if (this.opts.spans) this.opts.spans.set(v, [start, this.i]);
        return v;
      }
      case '"': return this.string();
      case 't': return this.lit('true', true);
      case 'f': return this.lit('false', false);
      case 'n': return this.lit('null', null);
      default:
        if (c === '-' || (c >= '0' && c <= '9')) return this.number();
        return this.fail(`unexpected character ${JSON.stringify(c)}`);
    }
  }
  lit<T extends JsonValue>(word: string, v: T): T {
    if (this.s.startsWith(word, this.i)) {
      this.i += word.length;
      return v;
    }
    return this.fail('invalid literal');
  }
  object(depth: number): JsonObject {
    if (depth > this.maxDepth) this.fail('nesting too deep');
    this.i++; // {
    const m: JsonObject = new Map();
    this.ws();
    if (this.s[this.i] === '}') {
      this.i++;
      return m;
    }
    for (;;) {
      this.ws();
      if (this.s[this.i] !== '"') this.fail('expected a member name');
      const k = this.string();
      this.ws();
      if (this.s[this.i] !== ':') this.fail("expected ':'");
      this.i++;
      this.ws();
      const v = this.value(depth);
      if (m.has(k) && this.opts.duplicates) {
        let set = this.opts.duplicates.get(m);
        if (!set) this.opts.duplicates.set(m, (set = new Set()));
        set.add(k);
      }
      m.set(k, v); // duplicates: the last one wins (J3 lets a receiver refuse instead)
      this.ws();
      const c = this.s[this.i];
      if (c === ',') { this.i++; continue; }
      if (c === '}') { this.i++; return m; }
      this.fail("expected ',' or '}'");
    }
  }
  array(depth: number): JsonValue[] {
    if (depth > this.maxDepth) this.fail('nesting too deep');
    this.i++; // [
    const a: JsonValue[] = [];
    this.ws();
    if (this.s[this.i] === ']') {
      this.i++;
      return a;
    }
    for (;;) {
      this.ws();
      a.push(this.value(depth));
      this.ws();
      const c = this.s[this.i];
      if (c === ',') { this.i++; continue; }
      if (c === ']') { this.i++; return a; }
      this.fail("expected ',' or ']'");
    }
  }
  string(): string {
    const s = this.s;
    this.i++; // opening quote
    let out = '';
    let start = this.i;
    for (;;) {
      if (this.i >= s.length) this.fail('unterminated string');
      const c = s.charCodeAt(this.i);
      if (c === 0x22) {
        out += s.slice(start, this.i);
        this.i++;
        return out;
      }
      if (c < 0x20) this.fail('control character in string');
      if (c === 0x5c) {
        out += s.slice(start, this.i);
        this.i++;
        const e = s[this.i];
        switch (e) {
          case '"': out += '"'; this.i++; break;
          case '\\': out += '\\'; this.i++; break;
          case '/': out += '/'; this.i++; break;
          case 'b': out += '\b'; this.i++; break;
          case 'f': out += '\f'; this.i++; break;
          case 'n': out += '\n'; this.i++; break;
          case 'r': out += '\r'; this.i++; break;
          case 't': out += '\t'; this.i++; break;
          case 'u': {
            this.i++;
            const u = this.hex4();
            if (u >= 0xd800 && u <= 0xdbff) {
              // must be followed by an escaped low surrogate
              if (s[this.i] === '\\' && s[this.i + 1] === 'u') {
                const save = this.i;
                this.i += 2;
                const lo = this.hex4();
                if (lo >= 0xdc00 && lo <= 0xdfff) {
                  out += String.fromCharCode(u, lo);
                  break;
                }
                if (this.strictSurrogates) this.fail('lone leading surrogate');
                this.i = save;
                out += String.fromCharCode(u);
                break;
              }
              if (this.strictSurrogates) this.fail('lone leading surrogate');
              out += String.fromCharCode(u);
            } else if (u >= 0xdc00 && u <= 0xdfff) {
              if (this.strictSurrogates) this.fail('lone trailing surrogate');
              out += String.fromCharCode(u);
            } else {
              out += String.fromCharCode(u);
            }
            break;
          }
          default:
            this.fail('invalid escape');
        }
        start = this.i;
        continue;
      }
      if (c >= 0xd800 && c <= 0xdfff && this.strictSurrogates) {
        // a raw surrogate code unit: fine only as a well-formed pair
        const d = s.charCodeAt(this.i + 1);
        if (c <= 0xdbff && d >= 0xdc00 && d <= 0xdfff) {
          this.i += 2;
          continue;
        }
        this.fail('lone surrogate');
      }
      this.i++;
    }
  }
  hex4(): number {
    const h = this.s.slice(this.i, this.i + 4);
    if (!/^[0-9a-fA-F]{4}$/.test(h)) this.fail('invalid \\u escape');
    this.i += 4;
    return parseInt(h, 16);
  }
  number(): number | bigint {
    const re = /-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;
    re.lastIndex = this.i;
    const m = re.exec(this.s);
    if (!m) return this.fail('invalid number');
    const text = m[0];
    this.i += text.length;
    const isInteger = m[2] === undefined && m[3] === undefined && text !== '-0';
    if (isInteger) {
      const b = BigInt(text);
      if (b >= I64_MIN && b <= U64_MAX) {
        return b >= -SAFE && b <= SAFE ? Number(b) : b;
      }
    }
    const n = Number(text);
    if (!Number.isFinite(n)) this.fail('number out of range'); // J9: 1e400 is not JSON
    return n;
  }
}

/** Compact JSON text of a value (bigints as exact integers, -0 kept). */
export function stringifyJson(v: JsonValue): string {
  const parts: string[] = [];
  write(v, parts);
  return parts.join('');
}

function write(v: JsonValue, out: string[]): void {
  if (v === null) out.push('null');
  else if (typeof v === 'boolean') out.push(v ? 'true' : 'false');
  else if (typeof v === 'string') out.push(JSON.stringify(v));
  else if (typeof v === 'bigint') out.push(v.toString());
  else if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new JsonError('NaN and Infinity are not JSON');
    out.push(Object.is(v, -0) ? '-0' : String(v));
  } else if (Array.isArray(v)) {
    out.push('[');
    v.forEach((e, i) => {
      if (i) out.push(',');
      write(e, out);
    });
    out.push(']');
  } else {
    out.push('{');
    let first = true;
    for (const [k, e] of v) {
      if (!first) out.push(',');
      first = false;
      out.push(JSON.stringify(k), ':');
      write(e, out);
    }
    out.push('}');
  }
}

export function isObject(v: JsonValue | undefined): v is JsonObject {
  return v instanceof Map;
}

/** §6.5 equality: numbers numerically (1 = 1.0, -0 = 0, bigints exact), strings by code point. */
export function jsonEqual(a: JsonValue, b: JsonValue): boolean {
  const ta = kind(a);
  if (ta !== kind(b)) return false;
  switch (ta) {
    case 'number':
      // eslint-disable-next-line eqeqeq
      return (a as number | bigint) == (b as number | bigint); // exact across number/bigint
    case 'array': {
      const x = a as JsonValue[];
      const y = b as JsonValue[];
      if (x.length !== y.length) return false;
      for (let i = 0; i < x.length; i++) if (!jsonEqual(x[i], y[i])) return false;
      return true;
    }
    case 'object': {
      const x = a as JsonObject;
      const y = b as JsonObject;
      if (x.size !== y.size) return false;
      for (const [k, v] of x) {
        if (!y.has(k)) return false;
        if (!jsonEqual(v, y.get(k) as JsonValue)) return false;
      }
      return true;
    }
    default:
      return a === b;
  }
}

function kind(v: JsonValue): string {
  if (v === null) return 'null';
  if (typeof v === 'bigint' || typeof v === 'number') return 'number';
  if (Array.isArray(v)) return 'array';
  if (v instanceof Map) return 'object';
  return typeof v;
}

export function cloneJson(v: JsonValue): JsonValue {
  if (Array.isArray(v)) return v.map(cloneJson);
  if (v instanceof Map) {
    const m: JsonObject = new Map();
    for (const [k, e] of v) m.set(k, cloneJson(e));
    return m;
  }
  return v;
}

/** Nesting depth: a scalar is 0, a container 1 + its deepest child. */
export function depthOf(v: JsonValue): number {
  if (Array.isArray(v)) {
    let d = 0;
    for (const e of v) d = Math.max(d, depthOf(e));
    return d + 1;
  }
  if (v instanceof Map) {
    let d = 0;
    for (const e of v.values()) d = Math.max(d, depthOf(e));
    return d + 1;
  }
  return 0;
}

/**
 * The weight counted for copy amplification (§15): 1 per value, containers
 * including their contents, plus the UTF-8 length of every string, member
 * names included.
 */
export function countValues(v: JsonValue): number {
  if (Array.isArray(v)) {
    let n = 1;
    for (const e of v) n += countValues(e);
    return n;
  }
  if (v instanceof Map) {
    let n = 1;
    for (const [k, e] of v) n += utf8Length(k) + countValues(e);
    return n;
  }
  if (typeof v === 'string') return 1 + utf8Length(v);
  return 1;
}

/** Length in UTF-8 bytes (§15 counts bytes; String.length counts UTF-16 units). */
export function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n += 4;
        i++;
      } else n += 3; // lone surrogate: encoded as U+FFFD
    } else n += 3;
  }
  return n;
}
