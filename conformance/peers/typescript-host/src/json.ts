// Strict JSON reading for args_json (PROTOCOL.md J1-J11), written for a host
// whose language reads numbers as binary64 and strings as UTF-16.
//
// JSON.parse is not used: it reads 1e400 as Infinity, large integers lossily,
// -0 as 0 once re-serialised, accepts escaped lone surrogates, and builds
// plain objects (a "__proto__" member name is special there).

export type JValue =
  | { t: "null" }
  | { t: "bool"; v: boolean }
  // `text` is the literal as written; `int` is set for J7 integers only.
  | { t: "num"; text: string; int: bigint | null }
  | { t: "str"; v: string }
  | { t: "arr"; v: JValue[] }
  | { t: "obj"; v: Map<string, JValue> };

export class JsonError extends Error {}

/** Deepest nesting read, the outermost array or object being level 1 (J4, §15). */
export const MAX_DEPTH = 127;

const NUMBER_RE = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
const INTEGER_RE = /^(?:0|-?[1-9][0-9]*)$/;

export function parseJson(text: string): JValue {
  const p = new Parser(text);
  p.ws();
  const v = p.value(1);
  p.ws();
  if (p.i !== text.length) throw new JsonError(`unexpected character at offset ${p.i}`);
  return v;
}

class Parser {
  i = 0;
  constructor(readonly s: string) {}

  ws(): void {
    const s = this.s;
    while (this.i < s.length) {
      const c = s.charCodeAt(this.i);
      // RFC 8259: space, tab, LF, CR only (a BOM is not whitespace, J1).
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) this.i++;
      else break;
    }
  }

  fail(what: string): never {
    throw new JsonError(`${what} at offset ${this.i}`);
  }

  value(depth: number): JValue {
    const s = this.s;
    if (this.i >= s.length) this.fail("unexpected end of input");
    const c = s[this.i];
    switch (c) {
      case "{":
        return this.object(depth);
      case "[":
        return this.array(depth);
      case '"':
        return { t: "str", v: this.string() };
      case "t":
        return this.literal("true", { t: "bool", v: true });
      case "f":
        return this.literal("false", { t: "bool", v: false });
      case "n":
        return this.literal("null", { t: "null" });
      default:
        return this.number();
    }
  }

  literal(word: string, v: JValue): JValue {
    if (this.s.startsWith(word, this.i)) {
      this.i += word.length;
      return v;
    }
    return this.fail("invalid literal");
  }

  number(): JValue {
    NUMBER_RE.lastIndex = this.i;
    const m = NUMBER_RE.exec(this.s) ?? this.fail("invalid value");
    const text = m[0];
    this.i += text.length;
    // J9: a literal beyond binary64's finite range is not JSON.
    if (!Number.isFinite(Number(text))) this.fail("number out of binary64 range");
    const int = INTEGER_RE.test(text) ? BigInt(text) : null;
    return { t: "num", text, int };
  }

  string(): string {
    const s = this.s;
    this.i++; // opening quote
    let out = "";
    let start = this.i;
    for (;;) {
      if (this.i >= s.length) this.fail("unterminated string");
      const c = s.charCodeAt(this.i);
      if (c === 0x22) {
        out += s.slice(start, this.i);
        this.i++;
        return out;
      }
      if (c < 0x20) this.fail("control character in string");
      if (c >= 0xd800 && c <= 0xdfff) {
        // An unescaped surrogate must be part of a pair (it always is when
        // the text came from valid UTF-8).
        const d = s.charCodeAt(this.i + 1);
        if (c <= 0xdbff && d >= 0xdc00 && d <= 0xdfff) {
          this.i += 2;
          continue;
        }
        this.fail("lone surrogate");
      }
      if (c !== 0x5c) {
        this.i++;
        continue;
      }
      out += s.slice(start, this.i);
      this.i++;
      const e = s[this.i++];
      switch (e) {
        case '"': out += '"'; break;
        case "\\": out += "\\"; break;
        case "/": out += "/"; break;
        case "b": out += "\b"; break;
        case "f": out += "\f"; break;
        case "n": out += "\n"; break;
        case "r": out += "\r"; break;
        case "t": out += "\t"; break;
        case "u": {
          const u = this.hex4();
          if (u >= 0xd800 && u <= 0xdbff) {
            // J2: an escaped high surrogate must be followed by an escaped low one.
            if (s[this.i] !== "\\" || s[this.i + 1] !== "u") this.fail("lone surrogate escape");
            this.i += 2;
            const l = this.hex4();
            if (l < 0xdc00 || l > 0xdfff) this.fail("lone surrogate escape");
            out += String.fromCharCode(u, l);
          } else if (u >= 0xdc00 && u <= 0xdfff) {
            this.fail("lone surrogate escape");
          } else {
            out += String.fromCharCode(u);
          }
          break;
        }
        default:
          this.fail("invalid escape");
      }
      start = this.i;
    }
  }

  hex4(): number {
    const h = this.s.slice(this.i, this.i + 4);
    if (!/^[0-9a-fA-F]{4}$/.test(h)) this.fail("invalid \\u escape");
    this.i += 4;
    return parseInt(h, 16);
  }

  array(depth: number): JValue {
    if (depth > MAX_DEPTH) this.fail("nested too deeply");
    this.i++;
    const v: JValue[] = [];
    this.ws();
    if (this.s[this.i] === "]") {
      this.i++;
      return { t: "arr", v };
    }
    for (;;) {
      this.ws();
      v.push(this.value(depth + 1));
      this.ws();
      const c = this.s[this.i++];
      if (c === "]") return { t: "arr", v };
      if (c !== ",") { this.i--; this.fail("expected , or ]"); }
    }
  }

  object(depth: number): JValue {
    if (depth > MAX_DEPTH) this.fail("nested too deeply");
    this.i++;
    const v = new Map<string, JValue>();
    this.ws();
    if (this.s[this.i] === "}") {
      this.i++;
      return { t: "obj", v };
    }
    for (;;) {
      this.ws();
      if (this.s[this.i] !== '"') this.fail("expected member name");
      const k = this.string();
      // J3: duplicate names MAY be refused; this host refuses them.
      if (v.has(k)) this.fail("duplicate member name");
      this.ws();
      if (this.s[this.i++] !== ":") { this.i--; this.fail("expected :"); }
      this.ws();
      v.set(k, this.value(depth + 1));
      this.ws();
      const c = this.s[this.i++];
      if (c === "}") return { t: "obj", v };
      if (c !== ",") { this.i--; this.fail("expected , or }"); }
    }
  }
}

/** JSON text of a string (JSON.stringify escapes lone surrogates, which never reach here). */
export function jsonString(s: string): string {
  return JSON.stringify(s);
}

/** Number of bytes `s` takes in UTF-8 (not String.length). */
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
      } else n += 3;
    } else n += 3;
  }
  return n;
}

/** Cut `s` to at most `max` UTF-8 bytes without splitting a code point. */
export function truncateUtf8(s: string, max: number): string {
  if (utf8Length(s) <= max) return s;
  let n = 0;
  let i = 0;
  for (const ch of s) {
    const l = utf8Length(ch);
    if (n + l > max) break;
    n += l;
    i += ch.length;
  }
  return s.slice(0, i);
}

/** RFC 6901 escaping of one reference token. */
export function pointerToken(s: string): string {
  return s.replace(/~/g, "~0").replace(/\//g, "~1");
}
