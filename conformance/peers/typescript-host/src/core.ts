// Sans-IO host core (PROTOCOL.md §4, §5, §10-§15).
//
// The core has no clock, no sockets and no randomness: the driver gives it
// the epoch, opens and closes sessions, feeds it decoded ClientMessages,
// ticks the bookmark interval, and pulls each session's next HostMessage
// when its transport can take one. An envelope is "sent" (handed to the
// transport) exactly when nextOutgoing() returns it.

import { AnyModule, Method, SectionOp } from "./demo";
import { JsonError, JValue, parseJson, pointerToken, truncateUtf8, utf8Length } from "./json";
import {
  CallResult,
  ClientMessage,
  ErrorCode,
  HostMessage,
  PROTOCOL_VERSION,
  ProtoError,
  SnapshotReason,
  hostMessageSize,
} from "./messages";

export type SyncMode = "patch" | "snapshot";

export interface HostConfig {
  epoch: string;
  syncMode: SyncMode;
  modules: AnyModule[];
  /** Published sections, in the order they appear in the view. */
  sections: string[];
  peerId: string;
  maxMessageSize: number;
  historyEntries: number;
  historyBytes: number;
  maxCallsInFlight: number;
  /** Bytes of results not yet handed to the transport, per session. */
  maxUnreadResultBytes: number;
}

export const DEFAULTS = {
  maxMessageSize: 4 * 1024 * 1024,
  historyEntries: 1024,
  historyBytes: 8 * 1024 * 1024,
  maxCallsInFlight: 1024,
};

/** Longest `source` the host processes (§2, peer id). */
const MAX_SOURCE_BYTES = 1024;
/** Error messages are cut to this many bytes (§15). */
const MAX_ERROR_MESSAGE_BYTES = 1024;
/** Peer id length the view-size check leaves room for (§15). */
const SNAPSHOT_TARGET_ALLOWANCE = 64;

/** What receive() asks the transport to do. */
export type ReceiveAction = { close: false } | { close: true; reason: string };

interface HistoryEntry {
  version: bigint;
  /** The version's operations, comma-separated, without the brackets. */
  ops: string;
  opsBytes: number;
  accountBytes: number;
}

type Reply =
  | { kind: "result"; msg: HostMessage; need: bigint; bytes: number }
  | {
      kind: "sync";
      syncId: bigint;
      have: bigint;
      /** False when H2 forces a Snapshot whatever happens later. */
      resumable: boolean;
      target: string;
    };

interface Session {
  id: number;
  /** Attached once its first sync reply has been handed out (H3). */
  attached: boolean;
  /** The version of the last publication or sync reply handed out. */
  shown: bigint;
  replies: Reply[];
  /** Calls received whose result has not been handed out (§15). */
  inFlight: number;
  unreadResultBytes: number;
  /** The latest non-empty source decoded on this session (OVERFLOW target). */
  lastSource: string;
  halfClosed: boolean;
  bookmarkDue: boolean;
}

export class HostCore {
  readonly cfg: HostConfig;
  private version = 1n;
  private readonly modules = new Map<string, AnyModule>();
  private readonly states = new Map<string, unknown>();
  private readonly published: string[];
  /** JSON text of each published section. */
  private readonly sectionJson = new Map<string, string>();
  private viewJson = "";
  private viewBytes = 0;
  private readonly history: HistoryEntry[] = [];
  private historyAccount = 0;
  private readonly sessions = new Map<number, Session>();
  private nextSessionId = 1;

  constructor(cfg: HostConfig) {
    if (cfg.epoch === "") throw new Error("the epoch must be non-empty (E2)");
    this.cfg = cfg;
    for (const m of cfg.modules) {
      this.modules.set(m.name, m);
      this.states.set(m.name, m.initial());
    }
    this.published = cfg.sections.filter((s) => this.modules.has(s));
    for (const s of this.published) this.sectionJson.set(s, this.modules.get(s)!.toJson(this.states.get(s)));
    this.rebuildView();
  }

  get currentVersion(): bigint {
    return this.version;
  }

  get epoch(): string {
    return this.cfg.epoch;
  }

  // ---- sessions ----

  openSession(): number {
    const id = this.nextSessionId++;
    this.sessions.set(id, {
      id,
      attached: false,
      shown: 0n,
      replies: [],
      inFlight: 0,
      unreadResultBytes: 0,
      lastSource: "",
      halfClosed: false,
      bookmarkDue: false,
    });
    return id;
  }

  /** The session ended: everything queued for it is discarded (H16). */
  closeSession(id: number): void {
    this.sessions.delete(id);
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  /** The client closed its sending side (H16). */
  halfClose(id: number): void {
    const s = this.sessions.get(id);
    if (s) s.halfClosed = true;
  }

  /** True when a half-closed session has been sent every result and sync reply it is owed. */
  finished(id: number): boolean {
    const s = this.sessions.get(id);
    return !s || (s.halfClosed && s.replies.length === 0);
  }

  /** The bookmark interval elapsed (H10): mark every attached session. */
  tick(): void {
    for (const s of this.sessions.values()) if (s.attached) s.bookmarkDue = true;
  }

  // ---- input ----

  /** Handles one decoded ClientMessage from a session. */
  receive(id: number, m: ClientMessage): ReceiveAction {
    const s = this.sessions.get(id);
    if (!s) return { close: false };
    const h = m.header;
    const source = h?.source ?? "";
    // §2: a source over 1024 bytes MAY be left unprocessed (every reply repeats it).
    if (utf8Length(source) > MAX_SOURCE_BYTES) return { close: false };
    if (source !== "") s.lastSource = source;
    if (m.call) return this.onCall(s, m);
    if (m.syncRequest) {
      // H13: SyncRequests of another protocol version are ignored.
      if ((h?.protocolVersion ?? 0) !== PROTOCOL_VERSION) return { close: false };
      const r = m.syncRequest;
      const epochMatches = (h?.epoch ?? "") === this.cfg.epoch;
      // H2: have_version is judged against the version when the request arrives.
      const resumable = epochMatches && r.haveVersion > 0n && r.haveVersion <= this.version;
      s.replies.push({ kind: "sync", syncId: r.syncId, have: r.haveVersion, resumable, target: source });
      s.bookmarkDue = false;
      return { close: false };
    }
    // H13: no known kind: ignored.
    return { close: false };
  }

  private onCall(s: Session, m: ClientMessage): ReceiveAction {
    const call = m.call!;
    const h = m.header;
    const target = h?.source ?? "";
    const limit = this.cfg.maxCallsInFlight;
    // Flooding (H7): refuse without answering and close the session.
    if (s.inFlight >= 2 * limit) return { close: true, reason: "too many calls in flight" };
    if (s.unreadResultBytes > 2 * this.cfg.maxUnreadResultBytes) return { close: true, reason: "too many unread results" };
    const answer = (callId: bigint, outcome: { value: string } | { error: ProtoError }) => {
      this.queueResult(s, target, callId, outcome);
      return { close: false } as ReceiveAction;
    };
    const err = (code: ErrorCode, message: string) => ({ error: { code, message, detailsJson: "" } });
    // H7.1
    if ((h?.protocolVersion ?? 0) !== PROTOCOL_VERSION)
      return answer(call.callId, err(ErrorCode.FAILED_PRECONDITION, `protocol version ${h?.protocolVersion ?? 0} is not 1`));
    // H7.2
    if (call.callId === 0n) return answer(0n, err(ErrorCode.INVALID_ARGUMENT, "call_id must be non-zero"));
    // H7.3 (E7)
    if (h!.epoch !== "" && h!.epoch !== this.cfg.epoch)
      return answer(call.callId, err(ErrorCode.FAILED_PRECONDITION, "the call names another epoch"));
    // H7.4, then the unread-results bound (§15)
    if (s.inFlight >= limit) return answer(call.callId, err(ErrorCode.RESOURCE_EXHAUSTED, "too many calls in flight"));
    if (s.unreadResultBytes > this.cfg.maxUnreadResultBytes)
      return answer(call.callId, err(ErrorCode.RESOURCE_EXHAUSTED, "too many unread results"));
    // H7.5 (J4)
    let args: JValue[];
    try {
      args = parseArgs(call.argsJson);
    } catch (e) {
      return answer(call.callId, err(ErrorCode.INVALID_ARGUMENT, `args_json: ${(e as Error).message}`));
    }
    // H7.6
    const mod = this.modules.get(call.module);
    const method = mod?.methods.get(call.method);
    if (!mod || !method) return answer(call.callId, err(ErrorCode.NOT_FOUND, `no method ${call.module}.${call.method}`));
    // H7.8
    return answer(call.callId, this.run(mod, method, args, target, call.callId));
  }

  private run(
    mod: AnyModule,
    method: Method<unknown>,
    args: JValue[],
    target: string,
    callId: bigint,
  ): { value: string } | { error: ProtoError } {
    const before = this.states.get(mod.name);
    let out;
    try {
      out = method(before, args);
    } catch (e) {
      return { error: { code: ErrorCode.INTERNAL, message: `the method threw: ${(e as Error)?.message ?? e}`, detailsJson: "" } };
    }
    if (!out.ok) {
      // H9: only codes 1-8 are sent.
      const code = out.code >= 1 && out.code <= 8 ? out.code : ErrorCode.INTERNAL;
      return { error: { code, message: out.message, detailsJson: "" } };
    }
    // The value must fit one CallResult (§15, H7.8).
    const resultSize = hostMessageSize({
      header: { epoch: this.cfg.epoch, source: this.cfg.peerId, target },
      result: { callId, stateVersion: this.version + 1n, valueJson: out.value },
    });
    if (resultSize > this.cfg.maxMessageSize)
      return { error: { code: ErrorCode.RESOURCE_EXHAUSTED, message: "the value is too large for one result", detailsJson: "" } };
    const isPublished = this.published.includes(mod.name);
    if (!isPublished || out.ops.length === 0) {
      // V5/V6/SI4: no version.
      this.states.set(mod.name, out.state);
      return { value: out.value };
    }
    const newSection = mod.toJson(out.state);
    const oldSection = this.sectionJson.get(mod.name)!;
    const newViewBytes = this.viewBytes - utf8Length(oldSection) + utf8Length(newSection);
    if (newViewBytes > this.viewBytes && this.snapshotSize(newViewBytes) > this.cfg.maxMessageSize)
      return { error: { code: ErrorCode.RESOURCE_EXHAUSTED, message: "the published view would be too large for one snapshot", detailsJson: "" } };
    // Commit: exactly one version (V2, V3).
    this.states.set(mod.name, out.state);
    this.sectionJson.set(mod.name, newSection);
    this.rebuildView();
    this.version += 1n;
    this.record(this.version, sectionOps(mod.name, out.ops));
    return { value: out.value };
  }

  private snapshotSize(viewBytes: number): number {
    return hostMessageSize(
      {
        header: { epoch: this.cfg.epoch, source: this.cfg.peerId, target: "x".repeat(SNAPSHOT_TARGET_ALLOWANCE) },
        snapshot: { version: this.version + 1n, stateJson: "", syncId: 2n ** 64n - 1n, reason: SnapshotReason.OVERFLOW },
      },
      viewBytes,
    );
  }

  private rebuildView(): void {
    const parts = this.published.map((s) => `${JSON.stringify(s)}:${this.sectionJson.get(s)}`);
    this.viewJson = `{${parts.join(",")}}`;
    this.viewBytes = utf8Length(this.viewJson);
  }

  private record(version: bigint, ops: string): void {
    const opsBytes = utf8Length(ops);
    // Counted like the reference (H11): the operations' JSON, twice in patch
    // mode (the publication is kept too), plus 64.
    const accountBytes = (this.cfg.syncMode === "patch" ? 2 : 1) * (opsBytes + 2) + 64;
    this.history.push({ version, ops, opsBytes, accountBytes });
    this.historyAccount += accountBytes;
    // Keep the newest version always; drop the oldest beyond either bound.
    while (
      this.history.length > 1 &&
      (this.history.length > this.cfg.historyEntries || this.historyAccount > this.cfg.historyBytes)
    ) {
      this.historyAccount -= this.history.shift()!.accountBytes;
    }
  }

  private queueResult(s: Session, target: string, callId: bigint, outcome: { value: string } | { error: ProtoError }): void {
    const result: CallResult = { callId, stateVersion: this.version };
    if ("value" in outcome) result.valueJson = outcome.value;
    else result.error = { ...outcome.error, message: truncateUtf8(outcome.error.message, MAX_ERROR_MESSAGE_BYTES) };
    const msg: HostMessage = { header: this.header(target), result };
    const bytes = hostMessageSize(msg);
    s.replies.push({ kind: "result", msg, need: this.version, bytes });
    s.inFlight++;
    s.unreadResultBytes += bytes;
  }

  private header(target: string): HostMessage["header"] {
    return { epoch: this.cfg.epoch, source: this.cfg.peerId, target };
  }

  // ---- output ----

  /**
   * The next envelope for the session, now handed to the transport, or
   * undefined when it has nothing to send.
   */
  nextOutgoing(id: number): HostMessage | undefined {
    const s = this.sessions.get(id);
    if (!s) return undefined;
    const head = s.replies[0];
    if (head) {
      if (head.kind === "sync") {
        s.replies.shift();
        return this.syncReply(s, head);
      }
      // H8: a result follows the publication of its version (sessions that
      // have not synced get theirs at once).
      if (!s.attached || head.need <= s.shown) {
        s.replies.shift();
        s.inFlight--;
        s.unreadResultBytes -= head.bytes;
        return head.msg;
      }
    }
    if (s.attached && s.shown < this.version) {
      s.bookmarkDue = false;
      if (this.cfg.syncMode === "snapshot") {
        // H6: a session that is behind gets only the newest snapshot.
        s.shown = this.version;
        return {
          header: this.header(""),
          snapshot: { version: this.version, stateJson: this.viewJson, syncId: 0n, reason: SnapshotReason.COMMIT },
        };
      }
      const next = s.shown + 1n;
      const e = this.historyEntry(next);
      if (e) {
        s.shown = next;
        return { header: this.header(""), patch: { baseVersion: next - 1n, version: next, patchJson: `[${e.ops}]`, syncId: 0n } };
      }
      // H12: a publication this session needs is gone: one OVERFLOW snapshot.
      s.shown = this.version;
      return {
        header: this.header(s.lastSource),
        snapshot: { version: this.version, stateJson: this.viewJson, syncId: 0n, reason: SnapshotReason.OVERFLOW },
      };
    }
    if (s.attached && s.bookmarkDue && s.replies.length === 0 && s.shown === this.version) {
      // H10
      s.bookmarkDue = false;
      return { header: this.header(""), patch: { baseVersion: this.version, version: this.version, patchJson: "[]", syncId: 0n } };
    }
    return undefined;
  }

  private historyEntry(version: bigint): HistoryEntry | undefined {
    if (this.history.length === 0) return undefined;
    const first = this.history[0].version;
    if (version < first || version > this.version) return undefined;
    return this.history[Number(version - first)];
  }

  /**
   * A sync reply, built when it is handed out at the version current then
   * (H2 allows this when no publication goes to the session in between).
   */
  private syncReply(s: Session, r: Extract<Reply, { kind: "sync" }>): HostMessage {
    const current = this.version;
    s.attached = true;
    s.shown = current;
    s.bookmarkDue = false;
    const header = this.header(r.target);
    if (r.resumable && r.have <= current) {
      const ops: string[] = [];
      let bytes = 0;
      let complete = true;
      for (let v = r.have + 1n; v <= current; v++) {
        const e = this.historyEntry(v);
        if (!e) {
          complete = false;
          break;
        }
        if (e.ops !== "") {
          ops.push(e.ops);
          bytes += e.opsBytes + 1;
        }
        if (bytes > this.cfg.maxMessageSize) {
          complete = false;
          break;
        }
      }
      if (complete) {
        const patchJson = `[${ops.join(",")}]`;
        const msg: HostMessage = { header, patch: { baseVersion: r.have, version: current, patchJson, syncId: r.syncId } };
        // H2: never a resume Patch over the max message size.
        if (hostMessageSize(msg) <= this.cfg.maxMessageSize) return msg;
      }
    }
    return { header, snapshot: { version: current, stateJson: this.viewJson, syncId: r.syncId, reason: SnapshotReason.SYNC } };
  }
}

/** J4: "" is []; anything else must be a JSON array. */
export function parseArgs(text: string): JValue[] {
  if (text === "") return [];
  const v = parseJson(text);
  if (v.t !== "arr") throw new JsonError("not a JSON array");
  return v.v;
}

/** A commit's operations, prefixed with the section (PA2), comma-separated. */
function sectionOps(section: string, ops: SectionOp[]): string {
  const prefix = "/" + pointerToken(section);
  return ops
    .map((o) => {
      const path = JSON.stringify(prefix + o.path);
      return o.value === undefined ? `{"op":"${o.op}","path":${path}}` : `{"op":"${o.op}","path":${path},"value":${o.value}}`;
    })
    .join(",");
}
