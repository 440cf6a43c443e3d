// Envelope types of proto/cosystem/worker/v1/worker.proto, with uint64 fields as bigint
// (versions, ids and sync ids may exceed 2^53: V8, client-huge-versions).

import { JsonValue, JsonObject, isObject } from './json';
import { utf8Length } from './json';

export interface Header {
  protocolVersion: number;
  epoch: string;
  source: string;
  target: string;
  capability: string;
}

export const SnapshotReason = { UNSPECIFIED: 0, COMMIT: 1, SYNC: 2, OVERFLOW: 3, ANNOUNCE: 4 } as const;
export const SyncReason = {
  UNSPECIFIED: 0, INITIAL: 1, MISSING_SNAPSHOT: 2, VERSION_GAP: 3, PATCH_APPLY_FAILED: 4,
  RESULT_AHEAD: 5, RECONNECT: 6, RETRY: 7,
} as const;
export const ErrorCode = {
  UNSPECIFIED: 0, NOT_FOUND: 1, INVALID_ARGUMENT: 2, FAILED: 3, UNAVAILABLE: 4,
  PERMISSION_DENIED: 5, RESOURCE_EXHAUSTED: 6, INTERNAL: 7, FAILED_PRECONDITION: 8,
  DEADLINE_EXCEEDED: 9, CANCELLED: 10, DISPOSED: 11, OUTCOME_UNKNOWN: 12,
} as const;

export const SNAPSHOT_REASON_NAMES = ['SNAPSHOT_REASON_UNSPECIFIED', 'SNAPSHOT_REASON_COMMIT', 'SNAPSHOT_REASON_SYNC', 'SNAPSHOT_REASON_OVERFLOW', 'SNAPSHOT_REASON_ANNOUNCE'];
export const SYNC_REASON_NAMES = ['SYNC_REASON_UNSPECIFIED', 'SYNC_REASON_INITIAL', 'SYNC_REASON_MISSING_SNAPSHOT', 'SYNC_REASON_VERSION_GAP', 'SYNC_REASON_PATCH_APPLY_FAILED', 'SYNC_REASON_RESULT_AHEAD', 'SYNC_REASON_RECONNECT', 'SYNC_REASON_RETRY'];
export const ERROR_CODE_NAMES = ['ERROR_CODE_UNSPECIFIED', 'ERROR_CODE_NOT_FOUND', 'ERROR_CODE_INVALID_ARGUMENT', 'ERROR_CODE_FAILED', 'ERROR_CODE_UNAVAILABLE', 'ERROR_CODE_PERMISSION_DENIED', 'ERROR_CODE_RESOURCE_EXHAUSTED', 'ERROR_CODE_INTERNAL', 'ERROR_CODE_FAILED_PRECONDITION', 'ERROR_CODE_DEADLINE_EXCEEDED', 'ERROR_CODE_CANCELLED', 'ERROR_CODE_DISPOSED', 'ERROR_CODE_OUTCOME_UNKNOWN'];

export interface Snapshot { version: bigint; stateJson: string; syncId: bigint; reason: number }
export interface Patch { baseVersion: bigint; version: bigint; patchJson: string; syncId: bigint }
export interface ErrorMsg { code: number; message: string; detailsJson: string }
export interface CallResult {
  callId: bigint;
  stateVersion: bigint;
  valueJson?: string; // oneof outcome
  error?: ErrorMsg; // oneof outcome
}
export interface HostMessage {
  header?: Header;
  snapshot?: Snapshot;
  patch?: Patch;
  result?: CallResult;
}
export interface Call { callId: bigint; module: string; method: string; argsJson: string }
export interface SyncRequest { syncId: bigint; haveVersion: bigint; reason: number }
export interface ClientMessage { header: Header; call?: Call; syncRequest?: SyncRequest }

// ---------------------------------------------------------------------------------------
// proto3 canonical JSON mapping (§6.7). Accepts lowerCamelCase or original field names,
// uint64 as strings or numbers, enums as names or numbers.

class MappingError extends Error {}
export { MappingError };

function field(o: JsonObject, camel: string, snake: string): JsonValue | undefined {
  if (o.has(camel)) return o.get(camel);
  if (o.has(snake)) return o.get(snake);
  return undefined;
}

function u64(v: JsonValue | undefined): bigint {
  if (v === undefined || v === null) return 0n;
  let b: bigint;
  if (typeof v === 'bigint') b = v;
  else if (typeof v === 'number' && Number.isInteger(v)) b = BigInt(v);
  else if (typeof v === 'string' && /^[0-9]+$/.test(v)) b = BigInt(v);
  else throw new MappingError(`not a uint64: ${String(v)}`);
  if (b < 0n || b >= 2n ** 64n) throw new MappingError('uint64 out of range');
  return b;
}

function u32(v: JsonValue | undefined): number {
  if (v === undefined || v === null) return 0;
  const n = typeof v === 'string' ? Number(v) : Number(v as number);
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new MappingError('not a uint32');
  return n;
}

function str(v: JsonValue | undefined): string {
  if (v === undefined || v === null) return '';
  if (typeof v !== 'string') throw new MappingError('not a string');
  return v;
}

function enumValue(v: JsonValue | undefined, names: string[]): number {
  if (v === undefined || v === null) return 0;
  if (typeof v === 'string') {
    const i = names.indexOf(v);
    if (i >= 0) return i;
    if (/^-?[0-9]+$/.test(v)) return Number(v);
    throw new MappingError(`unknown enum name ${v}`);
  }
  if (typeof v === 'number' || typeof v === 'bigint') return Number(v);
  throw new MappingError('bad enum');
}

function obj(v: JsonValue | undefined): JsonObject | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isObject(v)) throw new MappingError('not an object');
  return v;
}

export function hostMessageFromJson(v: JsonValue): HostMessage {
  const o = obj(v);
  if (!o) throw new MappingError('envelope is not an object');
  const m: HostMessage = {};
  const h = obj(o.get('header'));
  if (h) {
    m.header = {
      protocolVersion: u32(field(h, 'protocolVersion', 'protocol_version')),
      epoch: str(h.get('epoch')),
      source: str(h.get('source')),
      target: str(h.get('target')),
      capability: str(h.get('capability')),
    };
  }
  const s = obj(o.get('snapshot'));
  if (s) {
    m.snapshot = {
      version: u64(s.get('version')),
      stateJson: str(field(s, 'stateJson', 'state_json')),
      syncId: u64(field(s, 'syncId', 'sync_id')),
      reason: enumValue(s.get('reason'), SNAPSHOT_REASON_NAMES),
    };
  }
  const p = obj(o.get('patch'));
  if (p) {
    m.patch = {
      baseVersion: u64(field(p, 'baseVersion', 'base_version')),
      version: u64(p.get('version')),
      patchJson: str(field(p, 'patchJson', 'patch_json')),
      syncId: u64(field(p, 'syncId', 'sync_id')),
    };
  }
  const r = obj(o.get('result'));
  if (r) {
    const res: CallResult = {
      callId: u64(field(r, 'callId', 'call_id')),
      stateVersion: u64(field(r, 'stateVersion', 'state_version')),
    };
    const vj = field(r, 'valueJson', 'value_json');
    if (vj !== undefined && vj !== null) res.valueJson = str(vj);
    const e = obj(r.get('error'));
    if (e) {
      res.error = {
        code: enumValue(e.get('code'), ERROR_CODE_NAMES),
        message: str(e.get('message')),
        detailsJson: str(field(e, 'detailsJson', 'details_json')),
      };
    }
    m.result = res;
  }
  return m;
}

/** ClientMessage in canonical JSON, defaults omitted. Returns a plain JS object for JSON.stringify. */
export function clientMessageToJson(m: ClientMessage): Record<string, unknown> {
  const h: Record<string, unknown> = {};
  if (m.header.protocolVersion) h.protocolVersion = m.header.protocolVersion;
  if (m.header.epoch) h.epoch = m.header.epoch;
  if (m.header.source) h.source = m.header.source;
  if (m.header.target) h.target = m.header.target;
  if (m.header.capability) h.capability = m.header.capability;
  const out: Record<string, unknown> = { header: h };
  if (m.call) {
    const c: Record<string, unknown> = {};
    if (m.call.callId) c.callId = m.call.callId.toString();
    if (m.call.module) c.module = m.call.module;
    if (m.call.method) c.method = m.call.method;
    if (m.call.argsJson) c.argsJson = m.call.argsJson;
    out.call = c;
  }
  if (m.syncRequest) {
    const s: Record<string, unknown> = {};
    if (m.syncRequest.syncId) s.syncId = m.syncRequest.syncId.toString();
    if (m.syncRequest.haveVersion) s.haveVersion = m.syncRequest.haveVersion.toString();
    if (m.syncRequest.reason) s.reason = SYNC_REASON_NAMES[m.syncRequest.reason];
    out.syncRequest = s;
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Protobuf binary size, for the max-call-size check (L2): sizes are bytes of the encoding,
// strings count their UTF-8 bytes, not String.length.

function varintSize(n: bigint): number {
  let s = 1;
  while (n >= 0x80n) {
    n >>= 7n;
    s++;
  }
  return s;
}

function strField(s: string): number {
  if (s === '') return 0;
  const n = utf8Length(s);
  return 1 + varintSize(BigInt(n)) + n;
}

function u64Field(v: bigint): number {
  return v === 0n ? 0 : 1 + varintSize(v);
}

function msgField(len: number): number {
  return 1 + varintSize(BigInt(len)) + len;
}

export function headerSize(h: Header): number {
  return u64Field(BigInt(h.protocolVersion)) + strField(h.epoch) + strField(h.source) +
    strField(h.target) + strField(h.capability);
}

export function encodedCallSize(h: Header, c: Call): number {
  const call = u64Field(c.callId) + strField(c.module) + strField(c.method) + strField(c.argsJson);
  return msgField(headerSize(h)) + msgField(call);
}
