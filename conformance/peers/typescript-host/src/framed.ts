// Framed byte-stream transport for the host core (PROTOCOL.md §17.3), on
// Node's `net`: TCP or a Unix socket.
//
// Each frame is a 4-byte big-endian length and one protobuf envelope (FB1).
// A connection's session opens with its first complete non-empty frame,
// which must arrive within FIRST_FRAME_MS of the accept (FB6); at most
// MAX_WAITING connections wait for theirs, the oldest closed first. All
// protocol logic is in HostCore, exactly as for the gRPC driver; this file
// cuts bytes into frames, writes the core's envelopes as frames, and closes
// connections.

import * as net from "net";
import { Codec } from "./grpc";
import { HostCore } from "./core";
import { ClientMessage } from "./messages";

/** FB6: the first frame must be complete this long after the accept. */
const FIRST_FRAME_MS = 10_000;
/** FB6: connections waiting for their first frame, per listener. */
const MAX_WAITING = 256;
/** FB6: TCP keepalive, so that a peer that vanished is found. */
const KEEPALIVE_MS = 30_000;

export interface FramedOptions {
  core: HostCore;
  codec: Codec;
  maxClients: number;
  bookmarkIntervalMs: number;
  log: (line: string) => void;
}

interface Conn {
  socket: net.Socket;
  /** Chunks read and not yet cut into frames, and their total length:
   * joined once per frame, so a large frame in many chunks costs linear
   * time, not a copy per chunk. */
  chunks: Buffer[];
  buffered: number;
  /** The session, once the first frame has arrived. */
  session: number | null;
  acceptedAt: number;
  deadline: NodeJS.Timeout | null;
  closed: boolean;
  blocked: boolean;
  halfClosed: boolean;
}

export class FramedServer {
  private readonly server: net.Server;
  private readonly conns = new Set<Conn>();
  /** Connections still waiting for their first frame, oldest first. */
  private readonly waiting = new Set<Conn>();
  /** Sockets ending cleanly after a half-close, still flushing: shutdown
   * destroys them, or a peer that stops reading would hold it up. */
  private readonly ending = new Set<net.Socket>();
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly opts: FramedOptions) {
    // Half-open: the end of a client's input is its half-close (FB6), after
    // which the host still writes what the session is owed.
    this.server = net.createServer({ allowHalfOpen: true }, (socket) => this.accept(socket));
  }

  /** Listens on `HOST:PORT` (port 0: any) and resolves with the port. */
  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(port, host, () => {
        this.server.off("error", reject);
        this.timer = setInterval(() => {
          this.opts.core.tick();
          this.pumpAll();
        }, this.opts.bookmarkIntervalMs);
        this.timer.unref();
        const address = this.server.address();
        resolve(typeof address === "object" && address !== null ? address.port : port);
      });
    });
  }

  /** Closes every connection and stops listening (FB6: a host that shuts down closes every connection). */
  shutdown(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    for (const c of [...this.conns]) this.close(c);
    for (const s of this.ending) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private accept(socket: net.Socket): void {
    socket.setNoDelay(true);
    socket.setKeepAlive(true, KEEPALIVE_MS);
    const c: Conn = {
      socket,
      chunks: [],
      buffered: 0,
      session: null,
      acceptedAt: Date.now(),
      deadline: null,
      closed: false,
      blocked: false,
      halfClosed: false,
    };
    this.conns.add(c);
    if (this.waiting.size >= MAX_WAITING) {
      // The one that has waited longest goes, not the newcomer (FB6).
      const oldest = this.waiting.values().next().value;
      if (oldest) this.close(oldest);
    }
    this.waiting.add(c);
    // From the accept, not the last byte: a peer trickling bytes is closed too.
    c.deadline = setTimeout(() => this.close(c), FIRST_FRAME_MS);
    socket.on("data", (chunk: Buffer) => this.received(c, chunk));
    socket.on("end", () => this.ended(c));
    socket.on("drain", () => {
      c.blocked = false;
      this.pump(c);
    });
    socket.on("error", () => this.close(c));
    socket.on("close", () => this.close(c));
  }

  private received(c: Conn, chunk: Buffer): void {
    if (c.closed) return;
    c.chunks.push(chunk);
    c.buffered += chunk.length;
    const limit = this.opts.core.cfg.maxMessageSize;
    while (!c.closed && c.buffered >= 4) {
      if (c.chunks[0].length < 4) c.chunks = [Buffer.concat(c.chunks, c.buffered)];
      const n = c.chunks[0].readUInt32BE(0);
      if (n > limit) {
        // FB4: no waiting for the body, nothing more written.
        this.opts.log(`closing a connection: frame of ${n} bytes over the limit of ${limit}`);
        this.close(c);
        return;
      }
      if (c.buffered < 4 + n) break;
      const all = c.chunks.length === 1 ? c.chunks[0] : Buffer.concat(c.chunks, c.buffered);
      // A copy, so that the rest of a chunk is not kept alive by the body.
      const body = Buffer.from(all.subarray(4, 4 + n));
      const rest = all.subarray(4 + n);
      c.chunks = rest.length > 0 ? [rest] : [];
      c.buffered = rest.length;
      // FB2: an empty frame is dropped as if it had not arrived.
      if (n > 0) this.frame(c, body);
    }
    this.pumpAll();
  }

  private frame(c: Conn, body: Buffer): void {
    let msg: ClientMessage;
    try {
      msg = this.opts.codec.decode(body);
    } catch (e) {
      // FB5: a malformed frame closes the connection.
      this.opts.log(`closing a connection: not a ClientMessage: ${(e as Error).message}`);
      this.close(c);
      return;
    }
    const core = this.opts.core;
    if (c.session === null) {
      this.waiting.delete(c);
      if (c.deadline) clearTimeout(c.deadline);
      c.deadline = null;
      if (core.sessionCount >= this.opts.maxClients) {
        // FB6: no envelope can say so; close, sending nothing.
        this.opts.log(`closing a connection: the host serves its limit of ${this.opts.maxClients} clients`);
        this.close(c);
        return;
      }
      c.session = core.openSession();
    }
    const action = core.receive(c.session, msg);
    if (action.close) {
      this.opts.log(`closing a session: ${action.reason}`);
      this.close(c);
    }
  }

  /** The end of the client's input: between frames a half-close (FB6), inside one a break (FB5). */
  private ended(c: Conn): void {
    if (c.closed) return;
    if (c.buffered > 0 || c.session === null) {
      this.close(c);
      return;
    }
    c.halfClosed = true;
    this.opts.core.halfClose(c.session);
    this.pump(c);
  }

  private pumpAll(): void {
    for (const c of this.conns) this.pump(c);
  }

  private pump(c: Conn): void {
    const core = this.opts.core;
    if (c.session === null) return;
    while (!c.closed && !c.blocked) {
      const m = core.nextOutgoing(c.session);
      if (!m) break;
      const body = this.opts.codec.encode(m);
      const prefix = Buffer.alloc(4);
      prefix.writeUInt32BE(body.length, 0);
      if (!c.socket.write(Buffer.concat([prefix, body]))) c.blocked = true;
    }
    if (!c.closed && c.halfClosed && core.finished(c.session)) {
      // H16: everything owed has been handed out: close cleanly.
      this.forget(c);
      this.ending.add(c.socket);
      c.socket.once("close", () => this.ending.delete(c.socket));
      c.socket.end();
    }
  }

  /** Ends the session and forgets the connection, leaving the socket as it is. */
  private forget(c: Conn): void {
    if (c.closed) return;
    c.closed = true;
    if (c.deadline) clearTimeout(c.deadline);
    this.waiting.delete(c);
    this.conns.delete(c);
    if (c.session !== null) this.opts.core.closeSession(c.session);
  }

  private close(c: Conn): void {
    this.forget(c);
    c.socket.destroy();
  }
}
