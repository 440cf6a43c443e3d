// Envelope types as the sans-IO core sees them (proto/cosystem/worker/v1/worker.proto).
// Every uint64 is a bigint: versions and ids may exceed 2^53 (§6.8).

import { utf8Length } from "./json";

export const PROTOCOL_VERSION = 1;

export enum SnapshotReason {
  UNSPECIFIED = 0,
  COMMIT = 1,
  SYNC = 2,
  OVERFLOW = 3,
  ANNOUNCE = 4,
}

export enum ErrorCode {
  UNSPECIFIED = 0,
  NOT_FOUND = 1,
  INVALID_ARGUMENT = 2,
  FAILED = 3,
  UNAVAILABLE = 4,
  PERMISSION_DENIED = 5,
  RESOURCE_EXHAUSTED = 6,
  INTERNAL = 7,
  FAILED_PRECONDITION = 8,
}

export interface Header {
  protocolVersion: number;
  epoch: string;
  source: string;
  target: string;
  capability: string;
}

export interface Call {
  callId: bigint;
  module: string;
  method: string;
  argsJson: string;
}

export interface SyncRequest {
  syncId: bigint;
  haveVersion: bigint;
  reason: number;
}

/** A decoded ClientMessage. `header` is null when absent (§3.2). */
export interface ClientMessage {
  header: Header | null;
  call: Call | null;
  syncRequest: SyncRequest | null;
}

export interface Snapshot {
  version: bigint;
  stateJson: string;
  syncId: bigint;
  reason: SnapshotReason;
}

export interface Patch {
  baseVersion: bigint;
  version: bigint;
  patchJson: string;
  syncId: bigint;
}

export interface ProtoError {
  code: ErrorCode;
  message: string;
  detailsJson: string;
}

export interface CallResult {
  callId: bigint;
  stateVersion: bigint;
  valueJson?: string;
  error?: ProtoError;
}

export interface HostMessage {
  header: { epoch: string; source: string; target: string };
  snapshot?: Snapshot;
  patch?: Patch;
  result?: CallResult;
}

// ---- protobuf encoded sizes (for the limits of §15, without encoding) ----

function varintSize(n: bigint | number): number {
  let v = BigInt(n);
  if (v < 0n) return 10; // negative int32/enum values take ten bytes
  let size = 1;
  while (v >= 0x80n) {
    v >>= 7n;
    size++;
  }
  return size;
}

/** Size of a length-delimited field with a one-byte tag. */
function lenField(len: number): number {
  return 1 + varintSize(len) + len;
}

function strField(s: string): number {
  return s === "" ? 0 : lenField(utf8Length(s));
}

function strFieldLen(len: number): number {
  return len === 0 ? 0 : lenField(len);
}

function u64Field(v: bigint | number): number {
  return BigInt(v) === 0n ? 0 : 1 + varintSize(v);
}

function headerSize(h: HostMessage["header"]): number {
  return u64Field(PROTOCOL_VERSION) + strField(h.epoch) + strField(h.source) + strField(h.target);
}

/**
 * Encoded size of a HostMessage. `stateOrPatchBytes` may be given to avoid
 * measuring a large *_json string again.
 */
export function hostMessageSize(m: HostMessage, jsonBytes?: number): number {
  let size = lenField(headerSize(m.header));
  if (m.snapshot) {
    const s = m.snapshot;
    const inner =
      u64Field(s.version) +
      strFieldLen(jsonBytes ?? utf8Length(s.stateJson)) +
      u64Field(s.syncId) +
      u64Field(s.reason);
    size += lenField(inner);
  } else if (m.patch) {
    const p = m.patch;
    const inner =
      u64Field(p.baseVersion) +
      u64Field(p.version) +
      strFieldLen(jsonBytes ?? utf8Length(p.patchJson)) +
      u64Field(p.syncId);
    size += lenField(inner);
  } else if (m.result) {
    const r = m.result;
    let inner = u64Field(r.callId) + u64Field(r.stateVersion);
    if (r.valueJson !== undefined) inner += lenField(jsonBytes ?? utf8Length(r.valueJson));
    if (r.error) {
      inner += lenField(u64Field(r.error.code) + strField(r.error.message) + strField(r.error.detailsJson));
    }
    size += lenField(inner);
  }
  return size;
}
