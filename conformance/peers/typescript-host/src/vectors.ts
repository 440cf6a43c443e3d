// Replays the host vectors (conformance/vectors/host/*.json, CONFORMANCE.md
// §3.3) against this host's sans-IO core, in process.
//
//   node dist/vectors.js [VECTOR_DIR] [--filter SUBSTRING]

import * as fs from "fs";
import * as path from "path";
import { HostCore, DEFAULTS } from "./core";
import { demoModules } from "./demo";
import { loadCodec } from "./grpc";
import { JValue, parseJson } from "./json";
import { ClientMessage, HostMessage, SnapshotReason, ErrorCode } from "./messages";

/* eslint-disable @typescript-eslint/no-explicit-any */

const SYNC_REASONS = ["UNSPECIFIED", "INITIAL", "MISSING_SNAPSHOT", "VERSION_GAP", "PATCH_APPLY_FAILED", "RESULT_AHEAD", "RECONNECT", "RETRY"];

function enumNum(v: any, prefix: string, names: string[]): number {
  if (v === undefined) return 0;
  if (typeof v === "number") return v;
  const i = names.indexOf(String(v).replace(prefix, ""));
  if (i < 0) throw new Error(`unknown enum ${v}`);
  return i;
}

function toClientMessage(o: any): ClientMessage {
  const h = o.header;
  const m: ClientMessage = {
    header: h
      ? { protocolVersion: h.protocolVersion ?? 0, epoch: h.epoch ?? "", source: h.source ?? "", target: h.target ?? "", capability: h.capability ?? "" }
      : null,
    call: null,
    syncRequest: null,
  };
  if (o.call) m.call = { callId: BigInt(o.call.callId ?? 0), module: o.call.module ?? "", method: o.call.method ?? "", argsJson: o.call.argsJson ?? "" };
  if (o.syncRequest)
    m.syncRequest = {
      syncId: BigInt(o.syncRequest.syncId ?? 0),
      haveVersion: BigInt(o.syncRequest.haveVersion ?? 0),
      reason: enumNum(o.syncRequest.reason, "SYNC_REASON_", SYNC_REASONS),
    };
  return m;
}

/** A HostMessage in the proto3 canonical JSON mapping (defaults omitted). */
function toCanonical(m: HostMessage): any {
  const o: any = { header: { protocolVersion: 1 } };
  if (m.header.epoch) o.header.epoch = m.header.epoch;
  if (m.header.source) o.header.source = m.header.source;
  if (m.header.target) o.header.target = m.header.target;
  const u = (v: bigint) => (v === 0n ? undefined : v.toString());
  if (m.snapshot) {
    const s = m.snapshot;
    o.snapshot = clean({ version: u(s.version), stateJson: s.stateJson || undefined, syncId: u(s.syncId), reason: s.reason ? `SNAPSHOT_REASON_${SnapshotReason[s.reason]}` : undefined });
  } else if (m.patch) {
    const p = m.patch;
    o.patch = clean({ baseVersion: u(p.baseVersion), version: u(p.version), patchJson: p.patchJson || undefined, syncId: u(p.syncId) });
  } else if (m.result) {
    const r = m.result;
    o.result = clean({ callId: u(r.callId), stateVersion: u(r.stateVersion) });
    if (r.valueJson !== undefined) o.result.valueJson = r.valueJson;
    if (r.error)
      o.result.error = clean({ code: r.error.code ? `ERROR_CODE_${ErrorCode[r.error.code]}` : undefined, message: r.error.message || undefined, detailsJson: r.error.detailsJson || undefined });
  }
  return o;
}

function clean(o: any): any {
  for (const k of Object.keys(o)) if (o[k] === undefined) delete o[k];
  return o;
}

// ---- pattern matching (§3.1) ----

function jsonEqual(a: JValue, b: JValue): boolean {
  if (a.t !== b.t) return false;
  switch (a.t) {
    case "null":
      return true;
    case "bool":
    case "str":
      return a.v === (b as any).v;
    case "num": {
      const bn = b as typeof a;
      if (a.int !== null && bn.int !== null) return a.int === bn.int;
      return Number(a.text) === Number(bn.text);
    }
    case "arr": {
      const bv = (b as typeof a).v;
      return a.v.length === bv.length && a.v.every((x, i) => jsonEqual(x, bv[i]));
    }
    case "obj": {
      const bv = (b as typeof a).v;
      if (a.v.size !== bv.size) return false;
      for (const [k, x] of a.v) {
        const y = bv.get(k);
        if (!y || !jsonEqual(x, y)) return false;
      }
      return true;
    }
  }
}

function isDefault(p: any): boolean {
  return p === 0 || p === "0" || p === "" || p === false || (typeof p === "string" && p.endsWith("_UNSPECIFIED"));
}

function match(p: any, a: any, binds: Map<string, any>, key = ""): string | null {
  if (p === "any") return a === undefined ? `${key}: missing` : null;
  if (typeof p === "string" && p.startsWith("$")) {
    if (!binds.has(p)) {
      binds.set(p, a);
      return null;
    }
    return JSON.stringify(binds.get(p)) === JSON.stringify(a) ? null : `${key}: ${JSON.stringify(a)} != ${p}`;
  }
  if (typeof p === "string" && key.endsWith("Json")) {
    if (typeof a !== "string") return `${key}: missing`;
    try {
      return jsonEqual(parseJson(p), parseJson(a)) ? null : `${key}: ${a} != ${p}`;
    } catch {
      return `${key}: unreadable ${a}`;
    }
  }
  if (p !== null && typeof p === "object" && !Array.isArray(p)) {
    if (a === null || typeof a !== "object") return `${key}: ${JSON.stringify(a)} is not an object`;
    for (const k of Object.keys(p)) {
      if (a[k] === undefined) {
        if (isDefault(p[k])) continue;
        return `${key}.${k}: missing`;
      }
      const e = match(p[k], a[k], binds, k);
      if (e) return e;
    }
    // A host may add details to any error (spec §3.9); a pattern that says
    // "detailsJson": "" requires none.
    const optional = (k: string) => key === "error" && k === "detailsJson";
    if (optional("detailsJson") && !("detailsJson" in p) && a.detailsJson !== undefined) {
      try {
        parseJson(a.detailsJson);
      } catch {
        return `${key}.detailsJson: not JSON ${JSON.stringify(a.detailsJson)}`;
      }
    }
    for (const k of Object.keys(a)) if (!(k in p) && !optional(k)) return `${key}.${k}: unexpected ${JSON.stringify(a[k])}`;
    return null;
  }
  if (Array.isArray(p)) {
    if (!Array.isArray(a) || a.length !== p.length) return `${key}: ${JSON.stringify(a)} length != ${p.length}`;
    for (let i = 0; i < p.length; i++) {
      const e = match(p[i], a[i], binds, key);
      if (e) return e;
    }
    return null;
  }
  return JSON.stringify(p) === JSON.stringify(a) ? null : `${key}: ${JSON.stringify(a)} != ${JSON.stringify(p)}`;
}

// ---- mirrors (test-side JSON Patch of add/remove/replace) ----

function unescape(t: string): string {
  return t.replace(/~1/g, "/").replace(/~0/g, "~");
}

function applyPatch(doc: any, ops: any[]): any {
  doc = structuredClone(doc);
  for (const op of ops) {
    const toks = op.path.split("/").slice(1).map(unescape);
    const last = toks.pop()!;
    let parent = doc;
    for (const t of toks) parent = parent[t];
    if (op.op === "add") {
      if (Array.isArray(parent)) parent.splice(last === "-" ? parent.length : Number(last), 0, op.value);
      else parent[last] = op.value;
    } else if (op.op === "remove") {
      if (Array.isArray(parent)) parent.splice(Number(last), 1);
      else delete parent[last];
    } else if (op.op === "replace") {
      parent[last] = op.value;
    } else throw new Error(`unexpected op ${op.op}`);
  }
  return doc;
}

// ---- the replay ----

function runCase(c: any, codec: ReturnType<typeof loadCodec>): string | null {
  const h = c.host;
  const secretToken = h.secret_token ?? "conformance-secret-token-1b7e";
  const sections: string[] = h.sections ?? ["counter", "todos"];
  const core = new HostCore({
    epoch: h.epoch,
    syncMode: h.sync,
    modules: demoModules(secretToken),
    sections,
    peerId: h.peer_id ?? "h",
    maxMessageSize: DEFAULTS.maxMessageSize,
    historyEntries: h.history_entries ?? DEFAULTS.historyEntries,
    historyBytes: DEFAULTS.historyBytes,
    maxCallsInFlight: h.max_calls_in_flight ?? DEFAULTS.maxCallsInFlight,
    maxUnreadResultBytes: 8 * DEFAULTS.maxMessageSize,
  });
  const ids = new Map<string, number>();
  const paused = new Set<string>();
  const mirrors = new Map<string, { version: bigint; view: any }>();
  const shownViews = new Map<string, any>();
  const binds = new Map<string, any>();
  for (let i = 0; i < c.steps.length; i++) {
    const st = c.steps[i];
    const sent = new Map<string, any[]>();
    const outbox: [string, HostMessage][] = [];
    if (st.connect) ids.set(st.connect.session, core.openSession());
    else if (st.send) {
      const msgs = st.send.messages ?? [st.send.message];
      for (const m of msgs) {
        const r = core.receive(ids.get(st.send.session)!, toClientMessage(m));
        if (r.close) return `step ${i}: session closed: ${r.reason}`;
        if (m.syncRequest && m.syncRequest.haveVersion && !mirrors.has(st.send.session)) {
          const v = shownViews.get(m.syncRequest.haveVersion);
          if (v !== undefined) mirrors.set(st.send.session, { version: BigInt(m.syncRequest.haveVersion), view: v });
        }
      }
    } else if (st.send_bytes) {
      let m: ClientMessage | null = null;
      try {
        m = codec.decode(Buffer.from(st.send_bytes.base64, "base64"));
      } catch {
        // The state machine ignores undecodable bytes (H14).
      }
      if (m) core.receive(ids.get(st.send_bytes.session)!, m);
    } else if (st.disconnect) {
      core.closeSession(ids.get(st.disconnect)!);
      ids.delete(st.disconnect);
    } else if (st.bookmark) core.tick();
    else if (st.pause) paused.add(st.pause);
    else if (st.resume) paused.delete(st.resume);
    for (const [name, id] of ids) {
      if (paused.has(name)) continue;
      for (let m = core.nextOutgoing(id); m; m = core.nextOutgoing(id)) {
        (sent.get(name) ?? sent.set(name, []).get(name)!).push(toCanonical(m));
        outbox.push([name, m]);
      }
    }
    // Mirrors.
    for (const [name, m] of outbox) {
      if (m.snapshot) mirrors.set(name, { version: m.snapshot.version, view: JSON.parse(m.snapshot.stateJson) });
      else if (m.patch) {
        const mir = mirrors.get(name);
        if (!mir || mir.version !== m.patch.baseVersion) return `step ${i}: ${name}: patch from ${m.patch.baseVersion} does not apply to mirror at ${mir?.version}`;
        mirrors.set(name, { version: m.patch.version, view: applyPatch(mir.view, JSON.parse(m.patch.patchJson)) });
      }
      const mir = mirrors.get(name);
      if (mir) shownViews.set(mir.version.toString(), mir.view);
    }
    // Section isolation.
    if (!sections.includes("secret")) {
      for (const [, list] of sent) if (JSON.stringify(list).includes(secretToken)) return `step ${i}: the secret token was sent`;
    }
    const exp = st.expect ?? {};
    const want = exp.sent ?? {};
    for (const name of new Set([...Object.keys(want), ...sent.keys()])) {
      const got = sent.get(name) ?? [];
      const pat = want[name] ?? [];
      const e = match(pat, got, binds, "sent");
      if (e) return `step ${i}: ${name}: ${e}\n  got ${JSON.stringify(got)}\n  want ${JSON.stringify(pat)}`;
    }
    for (const [name, w] of Object.entries<any>(exp.mirror ?? {})) {
      const mir = mirrors.get(name);
      if (!mir || mir.version.toString() !== String(w.version)) return `step ${i}: ${name}: mirror at ${mir?.version}, want ${w.version}`;
      if (JSON.stringify(sortKeys(mir.view)) !== JSON.stringify(sortKeys(w.view))) return `step ${i}: ${name}: mirror ${JSON.stringify(mir.view)} != ${JSON.stringify(w.view)}`;
    }
  }
  return null;
}

function sortKeys(v: any): any {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === "object") return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys(v[k])]));
  return v;
}

function main(): void {
  const args = process.argv.slice(2);
  let filter = "";
  const fi = args.indexOf("--filter");
  if (fi >= 0) {
    filter = args[fi + 1] ?? "";
    args.splice(fi, 2);
  }
  const root = path.resolve(__dirname, "..", "..", "..", "..");
  const dir = args[0] ?? path.join(root, "conformance", "vectors", "host");
  const codec = loadCodec(path.join(root, "proto"));
  let passed = 0;
  let failed = 0;
  for (const f of fs.readdirSync(dir).filter((x) => x.endsWith(".json")).sort()) {
    const file = JSON.parse(fs.readFileSync(path.join(dir, f), "utf8"));
    for (const c of file.cases) {
      if (!c.name.includes(filter)) continue;
      let err: string | null;
      try {
        err = runCase(c, codec);
      } catch (e) {
        err = `threw: ${(e as Error).stack}`;
      }
      if (err) {
        failed++;
        console.log(`FAIL ${c.name} (${c.tier}): ${err}`);
      } else {
        passed++;
        console.log(`PASS ${c.name}`);
      }
    }
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

main();
