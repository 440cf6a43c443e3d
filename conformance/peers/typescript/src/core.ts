// Sans-IO client core of the cosystem-worker protocol (PROTOCOL.md §8–§12).
//
// Inputs: host envelopes, application calls, cancellation, the current time, connection
// loss/restoration, reported envelope loss, disposal. Outputs: envelopes to send
// (pollTransmit) and events (pollEvent). No timers, no I/O: time is always an argument
// (milliseconds on any monotonic scale the driver chooses).

import { JsonValue, JsonObject, parseJson, isObject, JsonError, utf8Length } from './json';
import { applyPatch, PatchError, DEFAULT_PATCH_LIMITS, PatchLimits } from './patch';
import {
  Header, HostMessage, ClientMessage, Snapshot, Patch, CallResult, SyncReason, SnapshotReason,
  ErrorCode, encodedCallSize,
} from './envelope';

export interface ClientConfig {
  /** This client's peer id (`source` of what it sends; K1). */
  peerId: string;
  /** The host's peer id, if configured (SC6): envelopes from other sources are ignored. */
  hostId: string;
  /** Capability token of a shared channel (SC7), or "". */
  capability: string;
  /** Max pending calls (§15, L2). */
  maxPendingCalls: number;
  /** Sync retry interval in ms (§15, L5); never below 100. */
  syncRetryMs: number;
  /** Max encoded Call envelope size in bytes (§15, L2). */
  maxCallSize: number;
  /** Host silence in ms (L10), or null for off. */
  hostSilenceMs: number | null;
  /** Patch limits (§15). */
  patchLimits: PatchLimits;
}

export const DEFAULT_CONFIG: ClientConfig = {
  peerId: '',
  hostId: '',
  capability: '',
  maxPendingCalls: 1024,
  syncRetryMs: 2000,
  maxCallSize: 4 * 1024 * 1024,
  hostSilenceMs: null,
  patchLimits: DEFAULT_PATCH_LIMITS,
};

export type ConflictReason = 'stale-message' | 'missing-snapshot' | 'version-gap' | 'patch-apply-failed';

/** How a call settled. `stateVersion` is undefined for local outcomes. */
export type Outcome =
  | { ok: true; value: JsonValue; stateVersion: bigint }
  | { ok: false; code: number; message: string; details?: JsonValue; stateVersion?: bigint };

export type ClientEvent =
  | { type: 'ready' }
  | { type: 'state-changed'; epoch: string; version: bigint }
  | { type: 'conflict'; reason: ConflictReason; currentVersion: bigint; incomingVersion: bigint }
  | { type: 'notice'; kind: 'epoch-changed'; old: string; new: string }
  | { type: 'notice'; kind: 'unexpected-result'; callId: bigint }
  | { type: 'notice'; kind: 'malformed-message'; detail: string }
  | { type: 'notice'; kind: 'overflow'; version: bigint }
  | { type: 'notice'; kind: 'envelopes-lost'; count: number }
  | { type: 'notice'; kind: 'host-silent'; silenceMs: number }
  | { type: 'settled'; handle: number; callId?: bigint; outcome: Outcome };

type Phase = 'queued' | 'sent' | 'held';

interface PendingCall {
  handle: number;
  callId: bigint;
  module: string;
  method: string;
  argsJson: string;
  epoch: string | null; // bound epoch (E5); null = unbound
  deadline: number | null;
  phase: Phase;
  held?: { outcome: Outcome; stateVersion: bigint; arrival: number; firstSyncAfter: bigint };
}

interface Outstanding {
  syncId: bigint;
  have: bigint;
  reason: number;
  since: number;
  unsent: boolean;
}

export class ClientCore {
  readonly config: ClientConfig;
  private disposed = false;
  private connected = true;
  /** L10: when the host last spoke on this link (an envelope K1 kept), or null. */
  private heardAt: number | null = null;
  private mirror: JsonObject | null = null;
  private epoch = '';
  private version = 0n;
  private readyReported = false;
  private outstanding: Outstanding | null = null;
  private nextSyncId = 1n;
  private nextCallId = 1n;
  private nextHandle = 1;
  private arrivals = 0;
  /** Unsettled calls by call id, in creation order. */
  private calls = new Map<bigint, PendingCall>();
  /** Calls waiting to be handed to the transport, in order. */
  private sendQueue: PendingCall[] = [];
  private events: ClientEvent[] = [];

  /** L1: a new client, connected, at time `now`; it queues SyncRequest{have=0, INITIAL}. */
  constructor(config: Partial<ClientConfig> = {}, now = 0) {
    this.config = { ...DEFAULT_CONFIG, ...config };
    if (this.config.syncRetryMs < 100) this.config.syncRetryMs = 100; // §15 minimum
    this.requestSync(0n, SyncReason.INITIAL, now);
  }

  // ----------------------------------------------------------------------------- queries

  get isDisposed(): boolean { return this.disposed; }
  get isConnected(): boolean { return this.connected; }
  /** The mirrored view, or null in EMPTY. Treat as read-only. */
  get view(): JsonObject | null { return this.mirror; }
  get mirrorVersion(): bigint | null { return this.mirror ? this.version : null; }
  get mirrorEpoch(): string | null { return this.mirror ? this.epoch : null; }
  get pendingCalls(): number { return this.calls.size; }

  /** When the driver must next report the time, or null for never. */
  nextTimer(): number | null {
    if (this.disposed) return null;
    let t: number | null = null;
    for (const c of this.calls.values()) {
      if (c.deadline !== null && (t === null || c.deadline < t)) t = c.deadline;
    }
    if (this.connected && this.outstanding) {
      const r = this.outstanding.since + this.config.syncRetryMs;
      if (t === null || r < t) t = r;
    }
    const s = this.silenceDue();
    if (s !== null && (t === null || s < t)) t = s;
    return t;
  }

  private silenceDue(): number | null {
    if (this.config.hostSilenceMs === null || !this.connected || this.heardAt === null) return null;
    return this.heardAt + this.config.hostSilenceMs;
  }

  pollEvent(): ClientEvent | undefined {
    return this.events.shift();
  }

  /**
   * The next envelope to hand to the transport, or undefined. Only while connected.
   * The header is stamped now (E6, §3.2: the mirror's epoch when sent). A queued
   * SyncRequest goes ahead of queued Calls.
   */
  pollTransmit(): ClientMessage | undefined {
    if (this.disposed || !this.connected) return undefined;
    const o = this.outstanding;
    if (o && o.unsent) {
      o.unsent = false;
      return {
        header: this.header(),
        syncRequest: { syncId: o.syncId, haveVersion: o.have, reason: o.reason },
      };
    }
    const c = this.sendQueue.shift();
    if (c) {
      c.phase = 'sent';
      return {
        header: this.header(),
        call: { callId: c.callId, module: c.module, method: c.method, argsJson: c.argsJson },
      };
    }
    return undefined;
  }

  private header(): Header {
    return {
      protocolVersion: 1,
      epoch: this.mirror ? this.epoch : '',
      source: this.config.peerId,
      target: this.config.hostId,
      capability: this.config.capability,
    };
  }

  // ----------------------------------------------------------------------------- local inputs

  /**
   * L2. `argsJson` is sent as given ("" means []). Returns a handle; the call may already
   * be settled (an event is queued) if it was refused at once.
   */
  call(module: string, method: string, argsJson: string, deadline: number | null = null): { handle: number; callId?: bigint } {
    const handle = this.nextHandle++;
    if (this.disposed) {
      this.emitSettled(handle, undefined, local(ErrorCode.DISPOSED, 'the client is disposed'));
      return { handle };
    }
    if (this.calls.size >= this.config.maxPendingCalls) {
      this.emitSettled(handle, undefined, local(ErrorCode.RESOURCE_EXHAUSTED, `more than ${this.config.maxPendingCalls} calls in flight`));
      return { handle };
    }
    const callId = this.nextCallId;
    const size = encodedCallSize(this.header(), { callId, module, method, argsJson });
    if (size > this.config.maxCallSize) {
      this.emitSettled(handle, undefined, local(ErrorCode.RESOURCE_EXHAUSTED, `the call is ${size} bytes encoded, over the limit of ${this.config.maxCallSize}`));
      return { handle };
    }
    this.nextCallId++;
    const c: PendingCall = {
      handle, callId, module, method, argsJson,
      epoch: this.mirror ? this.epoch : null,
      deadline, phase: 'queued',
    };
    this.calls.set(callId, c);
    this.sendQueue.push(c);
    return { handle, callId };
  }

  /** L3. Cancelling a settled or unknown call does nothing. */
  cancel(handle: number): void {
    if (this.disposed) return;
    for (const c of this.calls.values()) {
      if (c.handle === handle) {
        this.settle(c, local(ErrorCode.CANCELLED, 'the call was cancelled'));
        return;
      }
    }
  }

  /** The driver reports the time: L4 (deadlines, earliest first), then L5, then L10. */
  tick(now: number): void {
    if (this.disposed) return;
    const due = [...this.calls.values()]
      .filter((c) => c.deadline !== null && now >= c.deadline)
      .sort((a, b) => (a.deadline as number) - (b.deadline as number) || (a.callId < b.callId ? -1 : 1));
    for (const c of due) {
      if (this.calls.get(c.callId) === c) {
        this.settle(c, local(ErrorCode.DEADLINE_EXCEEDED, "the call's deadline passed before it settled"));
      }
    }
    const o = this.outstanding;
    if (this.connected && o && now - o.since >= this.config.syncRetryMs) {
      if (o.unsent) {
        // L5: a request still queued went unsent, not unanswered: it goes
        // out as it stands, and its interval starts again.
        o.since = now;
      } else {
        const have = o.have === 0n ? 0n : (this.mirror ? this.version : 0n);
        this.requestSync(have, SyncReason.RETRY, now);
      }
    }
    const s = this.silenceDue();
    if (s !== null && now >= s) {
      // L10: the link is taken as lost; the driver closes it.
      this.events.push({ type: 'notice', kind: 'host-silent', silenceMs: this.config.hostSilenceMs as number });
      this.connectionLost();
    }
  }

  /** L6. */
  connectionLost(): void {
    if (this.disposed || !this.connected) return; // a repeated report changes nothing
    this.connected = false;
    this.heardAt = null;
    for (const c of [...this.calls.values()]) {
      if (c.phase === 'sent') this.settle(c, local(ErrorCode.OUTCOME_UNKNOWN, 'the connection broke while the call was in flight'));
    }
    this.outstanding = null;
  }

  /** L7. */
  reconnected(now: number): void {
    if (this.disposed) return;
    this.connected = true;
    this.heardAt = null;
    this.requestSync(this.mirror ? this.version : 0n, SyncReason.RECONNECT, now);
  }

  /** L9 (shared channels): the channel reports `count` envelopes lost. */
  envelopesLost(count: number, now: number): void {
    if (this.disposed) return;
    this.events.push({ type: 'notice', kind: 'envelopes-lost', count });
    for (const c of [...this.calls.values()]) {
      if (c.phase === 'sent') {
        this.settle(c, local(ErrorCode.OUTCOME_UNKNOWN, 'the channel lost envelopes while the call was in flight; its result may have been among them'));
      }
    }
    if (this.connected && this.mirror && !this.outstanding) {
      this.requestSync(this.version, SyncReason.VERSION_GAP, now);
    }
  }

  /** L8. */
  dispose(): void {
    if (this.disposed) return;
    for (const c of [...this.calls.values()]) this.settle(c, local(ErrorCode.DISPOSED, 'the client was disposed'));
    this.sendQueue = [];
    this.outstanding = null;
    this.disposed = true;
  }

  // ----------------------------------------------------------------------------- host input

  /** Handles one host envelope (§8.3–§8.6) received at time `now`. */
  handleHostMessage(m: HostMessage, now: number): void {
    if (this.disposed) return;
    const h: Header = m.header ?? { protocolVersion: 0, epoch: '', source: '', target: '', capability: '' };
    // K1
    if (h.target !== '' && h.target !== this.config.peerId) return;
    if (this.config.hostId !== '' && h.source !== this.config.hostId) return;
    if (this.config.capability !== '' && h.capability !== this.config.capability) return;
    if (this.connected) this.heardAt = now; // L10: whatever it says, the host spoke
    // K2
    if (!m.header || h.protocolVersion !== 1) {
      this.malformed(m.header ? `protocol version ${h.protocolVersion}` : 'no header');
      return;
    }
    // K2a
    if (h.epoch === '' || utf8Length(h.epoch) > 1024) {
      this.malformed('empty or over-long epoch');
      return;
    }
    this.dispatch(m, h, now);
    this.rearm(now); // Q1's re-arm
  }

  private dispatch(m: HostMessage, h: Header, now: number): void {
    if (m.snapshot) {
      const s = m.snapshot;
      if (s.version === 0n) return this.malformed('snapshot version 0');
      let state: JsonValue;
      try {
        state = parseJson(s.stateJson, { maxDepth: this.config.patchLimits.maxDepth });
      } catch (e) {
        return this.malformed(`snapshot state is not JSON: ${(e as Error).message}`);
      }
      if (!isObject(state)) return this.malformed('snapshot state is not an object');
      return this.onSnapshot(s, state, h, now);
    }
    if (m.patch) {
      if (m.patch.version < m.patch.baseVersion) return this.malformed('patch version below its base');
      return this.onPatch(m.patch, h, now);
    }
    if (m.result) return this.onResult(m.result, h, now);
    return this.malformed('no known kind');
  }

  private malformed(detail: string): void {
    this.events.push({ type: 'notice', kind: 'malformed-message', detail });
  }

  private isReply(syncId: bigint): boolean {
    return syncId !== 0n && this.outstanding !== null && this.outstanding.syncId === syncId;
  }

  /** A sync_id this client created (Q2: "a sync_id the client never created replies to nothing"). */
  private isOwnSyncId(syncId: bigint): boolean {
    return syncId !== 0n && syncId < this.nextSyncId;
  }

  // §8.4
  private onSnapshot(s: Snapshot, state: JsonObject, h: Header, now: number): void {
    if (this.mirror && h.epoch === this.epoch && s.version < this.version) {
      // S3
      this.events.push({ type: 'conflict', reason: 'stale-message', currentVersion: this.version, incomingVersion: s.version });
      if (this.isReply(s.syncId)) this.outstanding = null; // K6: a stale reply clears the request
      return;
    }
    // S1, S2, S4: ACCEPT
    const wasEmpty = this.mirror === null;
    const oldEpoch = this.epoch;
    const epochChanged = !wasEmpty && oldEpoch !== h.epoch;
    this.mirror = state;
    this.epoch = h.epoch;
    this.version = s.version;
    if (wasEmpty) {
      if (!this.readyReported) {
        this.readyReported = true;
        this.events.push({ type: 'ready' });
      }
    } else if (epochChanged) {
      this.events.push({ type: 'notice', kind: 'epoch-changed', old: oldEpoch, new: h.epoch });
    }
    for (const c of [...this.calls.values()]) {
      if (c.epoch !== null && c.epoch !== this.epoch) {
        this.settle(c, local(ErrorCode.OUTCOME_UNKNOWN, 'the host restarted (new epoch) after the call was made; whether it ran is unknown'));
      }
    }
    for (const c of this.calls.values()) if (c.epoch === null) c.epoch = this.epoch;
    if (s.reason === SnapshotReason.OVERFLOW) {
      this.events.push({ type: 'notice', kind: 'overflow', version: s.version });
    }
    this.outstanding = null;
    this.events.push({ type: 'state-changed', epoch: this.epoch, version: this.version });
    this.settleEligible();
    if (this.isOwnSyncId(s.syncId)) this.settleUnreachable(s.syncId);
  }

  // §8.5
  private onPatch(p: Patch, h: Header, now: number): void {
    const covered = this.outstanding !== null;
    const reply = this.isReply(p.syncId);
    if (!this.mirror || h.epoch !== this.epoch) {
      // P1–P4
      if (!covered) {
        this.events.push({ type: 'conflict', reason: 'missing-snapshot', currentVersion: this.mirror ? this.version : 0n, incomingVersion: p.version });
        this.requestSync(0n, SyncReason.MISSING_SNAPSHOT, now);
      } else if ((this.outstanding as Outstanding).have !== 0n) {
        this.requestSync(0n, SyncReason.MISSING_SNAPSHOT, now);
      }
      return;
    }
    const v = this.version;
    if (p.baseVersion === v) {
      let next: JsonObject;
      try {
        next = applyPatch(this.mirror, p.patchJson, p.baseVersion === p.version, this.config.patchLimits);
      } catch (e) {
        if (!(e instanceof PatchError)) throw e;
        // P6
        this.events.push({ type: 'conflict', reason: 'patch-apply-failed', currentVersion: v, incomingVersion: p.version });
        if (!this.outstanding || this.outstanding.have !== 0n) {
          this.requestSync(0n, SyncReason.PATCH_APPLY_FAILED, now);
        }
        return;
      }
      // P5
      this.mirror = next;
      if (reply) this.outstanding = null;
      if (p.version > v) {
        this.version = p.version;
        this.events.push({ type: 'state-changed', epoch: this.epoch, version: this.version });
      }
      this.settleEligible();
      if (this.isOwnSyncId(p.syncId)) this.settleUnreachable(p.syncId);
      return;
    }
    if (p.baseVersion > v) {
      // P7 / P8
      if (!covered) {
        this.events.push({ type: 'conflict', reason: 'version-gap', currentVersion: v, incomingVersion: p.version });
        this.requestSync(v, SyncReason.VERSION_GAP, now);
      }
      return;
    }
    // P9 / P10
    if (!covered) {
      this.events.push({ type: 'conflict', reason: 'stale-message', currentVersion: v, incomingVersion: p.version });
    } else if (reply) {
      this.outstanding = null; // K6: a stale reply clears the request
    }
  }

  // §8.6
  private onResult(r: CallResult, h: Header, now: number): void {
    const c = this.calls.get(r.callId);
    if (!c || c.phase !== 'sent') {
      // R1: unknown, 0, settled, not sent yet, or already holding a result
      this.events.push({ type: 'notice', kind: 'unexpected-result', callId: r.callId });
      return;
    }
    if (c.epoch !== null && c.epoch !== h.epoch) {
      // R2
      this.settle(c, local(ErrorCode.OUTCOME_UNKNOWN, 'the result comes from another host epoch than the call; whether it ran there is unknown'));
      return;
    }
    if (c.epoch === null) c.epoch = h.epoch; // R3
    const outcome = readOutcome(r);
    if (this.mirror && this.epoch === c.epoch && this.version >= r.stateVersion) {
      this.settle(c, outcome); // R4
      return;
    }
    // R5: hold
    c.phase = 'held';
    c.held = { outcome, stateVersion: r.stateVersion, arrival: this.arrivals++, firstSyncAfter: this.nextSyncId };
    if (this.mirror && this.version < r.stateVersion && !this.outstanding) {
      this.requestSync(this.version, SyncReason.RESULT_AHEAD, now); // Q1
    }
  }

  /** Q1's re-arm (SHOULD), after every envelope K1/K2/K2a did not ignore. */
  private rearm(now: number): void {
    if (this.disposed || this.outstanding || !this.connected || !this.mirror) return;
    for (const c of this.calls.values()) {
      if (c.held && c.epoch === this.epoch && this.version < c.held.stateVersion) {
        this.requestSync(this.version, SyncReason.RESULT_AHEAD, now);
        return;
      }
    }
  }

  /** RW5: held results the mirror has reached settle in arrival order. */
  private settleEligible(): void {
    const ready = [...this.calls.values()]
      .filter((c) => c.held && c.epoch === this.epoch && this.version >= c.held.stateVersion)
      .sort((a, b) => a.held!.arrival - b.held!.arrival);
    for (const c of ready) this.settle(c, c.held!.outcome);
  }

  /** Q2: after a reply to a request made after a held result, the mirror is still below it. */
  private settleUnreachable(replySyncId: bigint): void {
    const bad = [...this.calls.values()]
      .filter((c) => c.held && c.epoch === this.epoch && this.version < c.held.stateVersion && replySyncId >= c.held.firstSyncAfter)
      .sort((a, b) => a.held!.arrival - b.held!.arrival);
    for (const c of bad) {
      this.settle(c, local(ErrorCode.INTERNAL, `the result names version ${c.held!.stateVersion}, but the host's answer to a later sync request is at version ${this.version}: the result cannot be trusted`));
    }
  }

  // ----------------------------------------------------------------------------- helpers

  /** Queues a new SyncRequest, replacing (and withdrawing, if unsent) the outstanding one. */
  private requestSync(have: bigint, reason: number, now: number): void {
    this.outstanding = { syncId: this.nextSyncId++, have, reason, since: now, unsent: true };
  }

  private settle(c: PendingCall, outcome: Outcome): void {
    if (this.calls.get(c.callId) !== c) return;
    this.calls.delete(c.callId);
    if (c.phase === 'queued') {
      const i = this.sendQueue.indexOf(c);
      if (i >= 0) this.sendQueue.splice(i, 1); // withdrawn: never sent
    }
    this.emitSettled(c.handle, c.callId, outcome);
  }

  private emitSettled(handle: number, callId: bigint | undefined, outcome: Outcome): void {
    this.events.push({ type: 'settled', handle, callId, outcome });
  }
}

function local(code: number, message: string): Outcome {
  return { ok: false, code, message };
}

/** §3.8, §14, C3: what a CallResult's outcome means to the application. */
function readOutcome(r: CallResult): Outcome {
  if (r.error) {
    const code = r.error.code;
    const known = code >= 1 && code <= 12;
    let details: JsonValue | undefined;
    if (r.error.detailsJson !== '') {
      try {
        details = parseJson(r.error.detailsJson);
      } catch {
        details = r.error.detailsJson; // §3.9: expose unparseable details as a string
      }
    }
    return {
      ok: false,
      code: known ? code : ErrorCode.INTERNAL,
      message: known ? r.error.message : `error code ${code}: ${r.error.message}`,
      details,
      stateVersion: r.stateVersion,
    };
  }
  if (r.valueJson === undefined) {
    return { ok: false, code: ErrorCode.INTERNAL, message: 'the host sent a result with no outcome', stateVersion: r.stateVersion };
  }
  try {
    return { ok: true, value: parseJson(r.valueJson, { maxDepth: 127 }), stateVersion: r.stateVersion };
  } catch (e) {
    if (!(e instanceof JsonError)) throw e;
    return { ok: false, code: ErrorCode.INTERNAL, message: `the host sent a malformed value: ${e.message}`, stateVersion: r.stateVersion };
  }
}
