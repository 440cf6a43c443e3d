// The conformance demo app of PROTOCOL.md §19: counter, todos, secret.
//
// Modules are pure: a method takes the module's state and its parsed
// arguments and returns a new state (never mutating the old one), the
// operations that change the module's section, and its value. The core
// commits or discards the new state, so a failed or refused call needs no
// rollback (V4).

import { JValue, jsonString } from "./json";
import { ErrorCode } from "./messages";

/** One RFC 6902 operation, its path relative to the section. */
export interface SectionOp {
  op: "add" | "remove" | "replace";
  /** "" (the whole section) or "/..." below it, already RFC 6901 escaped. */
  path: string;
  /** JSON text of the value (add, replace). */
  value?: string;
}

export type MethodOutcome<S> =
  | { ok: true; state: S; ops: SectionOp[]; value: string }
  | { ok: false; code: ErrorCode; message: string };

export type Method<S> = (state: S, args: JValue[]) => MethodOutcome<S>;

export interface Module<S> {
  readonly name: string;
  initial(): S;
  /** JSON text of the section. */
  toJson(state: S): string;
  /** A Map, so that "constructor" or "__proto__" is never a method (§19.4). */
  readonly methods: ReadonlyMap<string, Method<S>>;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyModule = Module<any>;

const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;
const U64_MAX = 2n ** 64n - 1n;

function invalid<S>(message: string): MethodOutcome<S> {
  return { ok: false, code: ErrorCode.INVALID_ARGUMENT, message };
}

/** Checks arity; returns an error outcome or null. */
function arity<S>(args: JValue[], n: number): MethodOutcome<S> | null {
  return args.length === n ? null : invalid(`expected ${n} argument(s), got ${args.length}`);
}

/** A J7 integer in [min, max], or null. `1.0`, `1e0`, `-0`, `"1"` are not integers. */
function integerArg(v: JValue, min: bigint, max: bigint): bigint | null {
  if (v.t !== "num" || v.int === null) return null;
  return v.int >= min && v.int <= max ? v.int : null;
}

// ---- counter (§19.1) ----

export interface CounterState {
  count: bigint;
}

function counterAdd(state: CounterState, args: JValue[], sign: 1n | -1n): MethodOutcome<CounterState> {
  const bad = arity<CounterState>(args, 1);
  if (bad) return bad;
  const by = integerArg(args[0], I64_MIN, I64_MAX);
  if (by === null) return invalid("`by` must be an integer in [-2^63, 2^63-1]");
  const count = state.count + sign * by;
  if (count < I64_MIN || count > I64_MAX) return invalid("the count would leave the signed 64-bit range");
  if (count === state.count) return { ok: true, state, ops: [], value: count.toString() };
  return {
    ok: true,
    state: { count },
    ops: [{ op: "replace", path: "/count", value: count.toString() }],
    value: count.toString(),
  };
}

export const counter: Module<CounterState> = {
  name: "counter",
  initial: () => ({ count: 0n }),
  toJson: (s) => `{"count":${s.count.toString()}}`,
  methods: new Map<string, Method<CounterState>>([
    ["increase", (s, a) => counterAdd(s, a, 1n)],
    ["decrease", (s, a) => counterAdd(s, a, -1n)],
    [
      "fail",
      (s, a) => {
        const bad = arity<CounterState>(a, 1);
        if (bad) return bad;
        const m = a[0];
        if (m.t !== "str") return invalid("`message` must be a string");
        return { ok: false, code: ErrorCode.FAILED, message: m.v };
      },
    ],
  ]),
};

// ---- todos (§19.2) ----

export interface TodoItem {
  id: bigint;
  text: string;
  done: boolean;
}

export interface TodosState {
  items: readonly TodoItem[];
  /** The next id: host-internal, never published. */
  nextId: bigint;
}

function itemJson(it: TodoItem): string {
  return `{"id":${it.id.toString()},"text":${jsonString(it.text)},"done":${it.done}}`;
}

function findIndex(s: TodosState, a: JValue[]): number | MethodOutcome<TodosState> {
  const bad = arity<TodosState>(a, 1);
  if (bad) return bad;
  const id = integerArg(a[0], 0n, U64_MAX);
  if (id === null) return invalid("`id` must be an integer in [0, 2^64-1]");
  const i = s.items.findIndex((it) => it.id === id);
  if (i < 0) return { ok: false, code: ErrorCode.NOT_FOUND, message: `no todo with id ${id}` };
  return i;
}

function addItems(s: TodosState, texts: string[]): { state: TodosState; ops: SectionOp[]; ids: bigint[] } {
  const items = s.items.slice();
  const ops: SectionOp[] = [];
  const ids: bigint[] = [];
  let nextId = s.nextId;
  for (const text of texts) {
    const it = { id: nextId++, text, done: false };
    ops.push({ op: "add", path: `/items/${items.length}`, value: itemJson(it) });
    items.push(it);
    ids.push(it.id);
  }
  return { state: { items, nextId }, ops, ids };
}

export const todos: Module<TodosState> = {
  name: "todos",
  initial: () => ({ items: [], nextId: 1n }),
  toJson: (s) => `{"items":[${s.items.map(itemJson).join(",")}]}`,
  methods: new Map<string, Method<TodosState>>([
    [
      "add",
      (s, a) => {
        const bad = arity<TodosState>(a, 1);
        if (bad) return bad;
        const t = a[0];
        if (t.t !== "str") return invalid("`text` must be a string");
        const r = addItems(s, [t.v]);
        return { ok: true, state: r.state, ops: r.ops, value: r.ids[0].toString() };
      },
    ],
    [
      "toggle",
      (s, a) => {
        const i = findIndex(s, a);
        if (typeof i !== "number") return i;
        const items = s.items.slice();
        const done = !items[i].done;
        items[i] = { ...items[i], done };
        return {
          ok: true,
          state: { items, nextId: s.nextId },
          ops: [{ op: "replace", path: `/items/${i}/done`, value: String(done) }],
          value: String(done),
        };
      },
    ],
    [
      "remove",
      (s, a) => {
        const i = findIndex(s, a);
        if (typeof i !== "number") return i;
        const items = s.items.slice();
        items.splice(i, 1);
        return { ok: true, state: { items, nextId: s.nextId }, ops: [{ op: "remove", path: `/items/${i}` }], value: "true" };
      },
    ],
    [
      "clear",
      (s, a) => {
        const bad = arity<TodosState>(a, 0);
        if (bad) return bad;
        const n = s.items.length;
        if (n === 0) return { ok: true, state: s, ops: [], value: "0" };
        return {
          ok: true,
          state: { items: [], nextId: s.nextId },
          ops: [{ op: "replace", path: "/items", value: "[]" }],
          value: String(n),
        };
      },
    ],
    [
      "add_many",
      (s, a) => {
        const bad = arity<TodosState>(a, 1);
        if (bad) return bad;
        const arr = a[0];
        if (arr.t !== "arr") return invalid("`texts` must be an array of strings");
        const texts: string[] = [];
        for (const e of arr.v) {
          if (e.t !== "str") return invalid("every element of `texts` must be a string");
          texts.push(e.v);
        }
        if (texts.length === 0) return { ok: true, state: s, ops: [], value: "[]" };
        const r = addItems(s, texts);
        return { ok: true, state: r.state, ops: r.ops, value: `[${r.ids.join(",")}]` };
      },
    ],
  ]),
};

// ---- secret (§19.3) ----

export interface SecretState {
  initial: string;
  rotations: number;
  token: string;
}

export function secretModule(initialToken: string): Module<SecretState> {
  return {
    name: "secret",
    initial: () => ({ initial: initialToken, rotations: 0, token: initialToken }),
    toJson: (s) => `{"token":${jsonString(s.token)}}`,
    methods: new Map<string, Method<SecretState>>([
      [
        "rotate",
        (s, a) => {
          const bad = arity<SecretState>(a, 0);
          if (bad) return bad;
          const rotations = s.rotations + 1;
          // Every token contains the initial one (the runner's secret marker).
          const token = `${s.initial}-r${rotations}`;
          return {
            ok: true,
            state: { initial: s.initial, rotations, token },
            ops: [{ op: "replace", path: "/token", value: jsonString(token) }],
            value: "null",
          };
        },
      ],
    ]),
  };
}

export function demoModules(secretToken: string): AnyModule[] {
  return [counter, todos, secretModule(secretToken)];
}
