// gRPC transport for the host core (PROTOCOL.md §17.2), on @grpc/grpc-js.
//
// The service definition comes from proto/ at run time (via
// @grpc/proto-loader); messages cross grpc-js as raw bytes so that this
// driver decides what an undecodable message is (INVALID_ARGUMENT, not
// grpc-js's INTERNAL) and sizes every envelope itself.

import * as crypto from "crypto";
import * as http2 from "http2";
import * as path from "path";
import { isUtf8 } from "buffer";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { HostCore } from "./core";
import { ClientMessage, HostMessage } from "./messages";

export const SERVICE = "cosystem.worker.v1.HostService";

export interface ServerOptions {
  core: HostCore;
  protoDir: string;
  token: string | null;
  maxClients: number;
  bookmarkIntervalMs: number;
  log: (line: string) => void;
}

export type Codec = {
  definition: grpc.ServiceDefinition;
  decode: (buf: Buffer) => ClientMessage;
  encode: (m: HostMessage) => Buffer;
};

export function loadCodec(protoDir: string): Codec {
  const pkg = protoLoader.loadSync(path.join("cosystem", "worker", "v1", "worker.proto"), {
    includeDirs: [protoDir],
    keepCase: true,
    longs: String, // uint64 as decimal strings, read into bigint: no precision loss
    enums: Number,
    defaults: false,
    oneofs: true,
  });
  const service = pkg[SERVICE] as protoLoader.ServiceDefinition | undefined;
  if (!service || !service.Session) throw new Error(`${SERVICE}/Session not found in ${protoDir}`);
  const session = service.Session;
  if (!session.requestStream || !session.responseStream) throw new Error("Session is not a bidi stream");
  const definition: grpc.ServiceDefinition = {
    Session: {
      path: session.path,
      requestStream: true,
      responseStream: true,
      originalName: session.originalName,
      // Raw bytes in and out: decoding and encoding happen in the handler.
      requestSerialize: (b: Buffer) => b,
      requestDeserialize: (b: Buffer) => b,
      responseSerialize: (b: Buffer) => b,
      responseDeserialize: (b: Buffer) => b,
    } as grpc.MethodDefinition<Buffer, Buffer>,
  };
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const decodeObj = session.requestDeserialize as (b: Buffer) => any;
  const encodeObj = session.responseSerialize as (o: unknown) => Buffer;
  return {
    definition,
    decode: (buf) => {
      // protobufjs replaces invalid UTF-8 in string fields with U+FFFD;
      // proto3 strings must be valid UTF-8, so check the bytes first.
      checkClientMessageUtf8(buf);
      return normalize(decodeObj(buf));
    },
    encode: (m) => encodeObj(toProtoObject(m)),
  };
}

// ---- decoding ----

// eslint-disable-next-line @typescript-eslint/no-explicit-any
function normalize(o: any): ClientMessage {
  const h = o.header;
  const header = h
    ? {
        protocolVersion: Number(h.protocol_version ?? 0),
        epoch: h.epoch ?? "",
        source: h.source ?? "",
        target: h.target ?? "",
        capability: h.capability ?? "",
      }
    : null;
  const m: ClientMessage = { header, call: null, syncRequest: null };
  if (o.kind === "call" && o.call) {
    const c = o.call;
    m.call = { callId: BigInt(c.call_id ?? 0), module: c.module ?? "", method: c.method ?? "", argsJson: c.args_json ?? "" };
  } else if (o.kind === "sync_request" && o.sync_request) {
    const r = o.sync_request;
    m.syncRequest = { syncId: BigInt(r.sync_id ?? 0), haveVersion: BigInt(r.have_version ?? 0), reason: Number(r.reason ?? 0) };
  }
  return m;
}

/** String fields (by field number) of each message kind that has any. */
const STRING_FIELDS: Record<string, Record<number, string | true>> = {
  ClientMessage: { 1: "Header", 2: "Call", 3: "SyncRequest" },
  Header: { 2: true, 3: true, 4: true, 5: true },
  Call: { 2: true, 3: true, 4: true },
  SyncRequest: {},
};

function varint(buf: Buffer, pos: { i: number }, end: number): bigint {
  let v = 0n;
  for (let shift = 0n; shift < 70n; shift += 7n) {
    if (pos.i >= end) throw new Error("truncated varint");
    const byte = buf[pos.i++];
    v |= BigInt(byte & 0x7f) << shift;
    if ((byte & 0x80) === 0) return v;
  }
  throw new Error("varint too long");
}

/**
 * Walks the protobuf wire format of a message, checking that every string
 * field is valid UTF-8. `group` is the field number of an enclosing group.
 */
function walkRange(buf: Buffer, pos: { i: number }, end: number, type: string, group = -1): void {
  const fields = STRING_FIELDS[type] ?? {};
  while (pos.i < end) {
    const tag = varint(buf, pos, end);
    const field = Number(tag >> 3n);
    const wt = Number(tag & 7n);
    if (field === 0) throw new Error("field number 0");
    if (wt === 2) {
      const len = Number(varint(buf, pos, end));
      const s = pos.i;
      if (s + len > end) throw new Error("truncated field");
      const kind = fields[field];
      if (kind === true) {
        if (!isUtf8(buf.subarray(s, s + len))) throw new Error("a string field is not valid UTF-8");
      } else if (typeof kind === "string") {
        walkRange(buf, { i: s }, s + len, kind);
      }
      pos.i = s + len;
    } else if (wt === 0) varint(buf, pos, end);
    else if (wt === 1) pos.i += 8;
    else if (wt === 5) pos.i += 4;
    else if (wt === 3) walkRange(buf, pos, end, "", field);
    else if (wt === 4) {
      if (field !== group) throw new Error("unexpected end-group");
      return;
    } else throw new Error(`invalid wire type ${wt}`);
    if (pos.i > end) throw new Error("truncated field");
  }
  if (group !== -1) throw new Error("unterminated group");
}

function checkClientMessageUtf8(buf: Buffer): void {
  walkRange(buf, { i: 0 }, buf.length, "ClientMessage");
}

// ---- encoding ----

function u64(v: bigint): string | undefined {
  return v === 0n ? undefined : v.toString();
}

function str(s: string): string | undefined {
  return s === "" ? undefined : s;
}

function toProtoObject(m: HostMessage): unknown {
  const o: Record<string, unknown> = {
    header: { protocol_version: 1, epoch: m.header.epoch, source: str(m.header.source), target: str(m.header.target) },
  };
  if (m.snapshot) {
    const s = m.snapshot;
    o.snapshot = { version: u64(s.version), state_json: str(s.stateJson), sync_id: u64(s.syncId), reason: s.reason || undefined };
  } else if (m.patch) {
    const p = m.patch;
    o.patch = { base_version: u64(p.baseVersion), version: u64(p.version), patch_json: str(p.patchJson), sync_id: u64(p.syncId) };
  } else if (m.result) {
    const r = m.result;
    const res: Record<string, unknown> = { call_id: u64(r.callId), state_version: u64(r.stateVersion) };
    if (r.valueJson !== undefined) res.value_json = r.valueJson;
    else if (r.error) res.error = { code: r.error.code || undefined, message: str(r.error.message), details_json: str(r.error.detailsJson) };
    o.result = res;
  }
  return o;
}

// ---- authentication (§17.2) ----

/**
 * Node's http2 keeps only the first of several `authorization` headers
 * (it is a "single value" header), so grpc-js would never see a second
 * one. §17.2 requires refusing such a request: look at the raw header list
 * before grpc-js does and hand it both values.
 */
let http2Patched = false;
function exposeDuplicateAuthorization(): void {
  if (http2Patched) return;
  http2Patched = true;
  const original = http2.createServer;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  (http2 as any).createServer = function (this: unknown, ...args: any[]) {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const server = (original as any).apply(this, args) as http2.Http2Server;
    server.prependListener("stream", (_stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, _flags: number, raw?: string[]) => {
      if (!Array.isArray(raw)) return;
      const values: string[] = [];
      for (let i = 0; i + 1 < raw.length; i += 2) if (raw[i].toLowerCase() === "authorization") values.push(raw[i + 1]);
      // eslint-disable-next-line @typescript-eslint/no-explicit-any
      if (values.length > 1) (headers as any).authorization = values;
    });
    return server;
  };
}

function authorized(metadata: grpc.Metadata, token: string): boolean {
  const values = metadata.get("authorization");
  if (values.length !== 1) return false;
  const v = values[0];
  if (typeof v !== "string") return false;
  // Scheme case-insensitive, then exactly one space, then the token.
  if (v.length < 7 || v.slice(0, 7).toLowerCase() !== "bearer ") return false;
  const given = Buffer.from(v.slice(7), "utf8");
  const want = Buffer.from(token, "utf8");
  if (given.length !== want.length) {
    crypto.timingSafeEqual(want, want);
    return false;
  }
  return crypto.timingSafeEqual(given, want);
}

// ---- the server ----

interface Live {
  id: number;
  call: grpc.ServerDuplexStream<Buffer, Buffer>;
  closed: boolean;
  blocked: boolean;
  halfClosed: boolean;
}

export class HostServer {
  readonly server: grpc.Server;
  private readonly live = new Map<number, Live>();
  private readonly codec: Codec;
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly opts: ServerOptions) {
    exposeDuplicateAuthorization();
    this.codec = loadCodec(opts.protoDir);
    const max = opts.core.cfg.maxMessageSize;
    this.server = new grpc.Server({
      "grpc.max_receive_message_length": max,
      "grpc.max_send_message_length": max,
      "grpc.keepalive_time_ms": 30_000,
      "grpc.keepalive_timeout_ms": 20_000,
    });
    this.server.addService(this.codec.definition, {
      Session: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => this.session(call),
    });
  }

  listen(address: string): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, port) => {
        if (err) return reject(err);
        this.timer = setInterval(() => {
          this.opts.core.tick();
          this.pumpAll();
        }, this.opts.bookmarkIntervalMs);
        this.timer.unref();
        resolve(port);
      });
    });
  }

  /** Ends every session UNAVAILABLE and stops (§17.2). */
  shutdown(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    for (const l of this.live.values()) this.fail(l, grpc.status.UNAVAILABLE, "the host is shutting down");
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, 500);
      this.server.tryShutdown(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  private session(call: grpc.ServerDuplexStream<Buffer, Buffer>): void {
    const core = this.opts.core;
    if (this.opts.token !== null && !authorized(call.metadata, this.opts.token)) {
      call.emit("error", { code: grpc.status.UNAUTHENTICATED, details: "missing or wrong bearer token" });
      return;
    }
    if (core.sessionCount >= this.opts.maxClients) {
      call.emit("error", { code: grpc.status.RESOURCE_EXHAUSTED, details: "the host serves its maximum number of clients" });
      return;
    }
    const l: Live = { id: core.openSession(), call, closed: false, blocked: false, halfClosed: false };
    this.live.set(l.id, l);
    // §17.2 (opening): response headers as soon as the stream is accepted.
    // grpc-js otherwise sends them with the first message, which a client
    // that waits for them before its SyncRequest would never see.
    call.sendMetadata(new grpc.Metadata());
    call.on("data", (buf: Buffer) => {
      if (l.closed) return;
      let msg: ClientMessage;
      try {
        msg = this.codec.decode(buf);
      } catch (e) {
        this.fail(l, grpc.status.INVALID_ARGUMENT, `not a ClientMessage: ${(e as Error).message}`);
        return;
      }
      const action = core.receive(l.id, msg);
      if (action.close) {
        this.fail(l, grpc.status.RESOURCE_EXHAUSTED, action.reason);
      }
      this.pumpAll();
    });
    call.on("end", () => {
      if (l.closed) return;
      l.halfClosed = true;
      core.halfClose(l.id);
      this.pump(l);
    });
    const gone = () => this.drop(l);
    call.on("cancelled", gone);
    call.on("close", gone);
    call.on("error", gone);
    call.on("drain", () => {
      l.blocked = false;
      this.pump(l);
    });
  }

  private drop(l: Live): void {
    if (!this.live.has(l.id)) return;
    l.closed = true;
    this.live.delete(l.id);
    this.opts.core.closeSession(l.id);
  }

  private fail(l: Live, code: grpc.status, details: string): void {
    if (l.closed) return;
    this.drop(l);
    l.call.emit("error", { code, details });
  }

  private pumpAll(): void {
    for (const l of this.live.values()) this.pump(l);
  }

  private pump(l: Live): void {
    const core = this.opts.core;
    while (!l.closed && !l.blocked) {
      const m = core.nextOutgoing(l.id);
      if (!m) break;
      if (!l.call.write(this.codec.encode(m))) l.blocked = true;
    }
    if (!l.closed && l.halfClosed && core.finished(l.id)) {
      // H16: every result and sync reply owed has been handed out: end OK.
      this.drop(l);
      l.call.end();
    }
  }
}
