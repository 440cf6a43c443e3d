#!/usr/bin/env node
// cosystem-ts-host: serves the conformance demo app (PROTOCOL.md §19) over
// gRPC (§17.2) or framed TCP streams (§17.3).

import * as crypto from "crypto";
import * as fs from "fs";
import * as path from "path";
import { DEFAULTS, HostCore, SyncMode } from "./core";
import { demoModules } from "./demo";
import { FramedServer } from "./framed";
import { HostServer, loadCodec } from "./grpc";

const USAGE = `Usage: node dist/main.js [OPTIONS]

  --listen HOST:PORT          where to listen (plaintext HTTP/2) [127.0.0.1:50051]; port 0 picks a free one;
                              tcp://HOST:PORT serves framed streams (§17.3) instead
  --sync patch|snapshot       how commits are published [patch]
  --sections LIST             published modules, comma-separated [counter,todos]
  --token-file FILE           require "authorization: Bearer <token>" (surrounding whitespace ignored)
  --secret-token S            initial token of the private secret module [random]
  --peer-id ID                the host's peer id (header.source) [host]
  --epoch E                   the epoch (testing only) [128 random bits, hex]
  --history-window N          history window in versions [1024]
  --max-message-size BYTES    max message size [4194304]
  --max-calls-in-flight N     per-session in-flight limit [1024]
  --max-clients N             sessions served at once [10000]
  --bookmark-interval-ms MS   idle interval before a bookmark [5000]
  --proto-dir DIR             directory holding cosystem/worker/v1/worker.proto [../../../proto from here]

Prints "listening on http://HOST:PORT" (or tcp://HOST:PORT) on stdout once it accepts connections.`;

function main(argv: string[]): void {
  const opt = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "-h" || a === "--help") {
      console.log(USAGE);
      process.exit(0);
    }
    if (!a.startsWith("--") || i + 1 >= argv.length) {
      console.error(`unexpected argument ${a}\n\n${USAGE}`);
      process.exit(2);
    }
    opt.set(a.slice(2), argv[++i]);
  }
  const int = (name: string, dflt: number) => {
    const v = opt.get(name);
    if (v === undefined) return dflt;
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < 0) {
      console.error(`--${name} must be a non-negative integer`);
      process.exit(2);
    }
    return n;
  };
  const sync = (opt.get("sync") ?? "patch") as SyncMode;
  if (sync !== "patch" && sync !== "snapshot") {
    console.error("--sync must be patch or snapshot");
    process.exit(2);
  }
  const maxMessageSize = int("max-message-size", DEFAULTS.maxMessageSize);
  if (maxMessageSize < 1024 * 1024) {
    console.error("--max-message-size may not be below 1 MiB (§15)");
    process.exit(2);
  }
  const maxCallsInFlight = int("max-calls-in-flight", DEFAULTS.maxCallsInFlight);
  if (maxCallsInFlight < 16) {
    console.error("--max-calls-in-flight may not be below 16 (§15)");
    process.exit(2);
  }
  let token: string | null = null;
  const tokenFile = opt.get("token-file");
  if (tokenFile !== undefined) {
    token = fs.readFileSync(tokenFile, "utf8").trim();
    if (token === "") {
      console.error("the token file is empty");
      process.exit(2);
    }
  }
  const secret = opt.get("secret-token") ?? crypto.randomBytes(16).toString("hex");
  if (secret === "") {
    console.error("--secret-token may not be empty");
    process.exit(2);
  }
  const core = new HostCore({
    epoch: opt.get("epoch") ?? crypto.randomBytes(16).toString("hex"),
    syncMode: sync,
    modules: demoModules(secret),
    sections: (opt.get("sections") ?? "counter,todos").split(",").filter((s) => s !== ""),
    peerId: opt.get("peer-id") ?? "host",
    maxMessageSize,
    historyEntries: int("history-window", DEFAULTS.historyEntries),
    historyBytes: DEFAULTS.historyBytes,
    maxCallsInFlight,
    maxUnreadResultBytes: 8 * maxMessageSize,
  });
  const protoDir = opt.get("proto-dir") ?? path.resolve(__dirname, "..", "..", "..", "..", "proto");
  const listen = opt.get("listen") ?? "127.0.0.1:50051";
  const log = (l: string) => console.error(l);
  const maxClients = int("max-clients", 10_000);
  const bookmarkIntervalMs = int("bookmark-interval-ms", 5000);
  let shutdown: () => Promise<void>;
  if (listen.startsWith("tcp://")) {
    if (token !== null) {
      console.error("--token-file needs gRPC: framed streams carry no authentication (FB8)");
      process.exit(2);
    }
    // HOST is a name, an IPv4 address or a bracketed IPv6 one; PORT is
    // required (0 picks a free one).
    const m = /^tcp:\/\/(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):([0-9]{1,5})$/.exec(listen);
    const port = m ? Number(m[2]) : -1;
    if (!m || port > 65535) {
      console.error(`--listen ${listen}: expected tcp://HOST:PORT`);
      process.exit(2);
    }
    const host = m[1].replace(/^\[|\]$/g, "");
    const server = new FramedServer({ core, codec: loadCodec(protoDir), maxClients, bookmarkIntervalMs, log });
    shutdown = () => server.shutdown();
    server.listen(host, port).then(
      (bound) => {
        const shown = host.includes(":") ? `[${host}]` : host;
        console.log(`listening on tcp://${shown}:${bound} (sync ${sync}, epoch ${core.epoch})`);
      },
      (err) => {
        console.error(`cannot listen on ${listen}: ${err.message}`);
        process.exit(1);
      },
    );
  } else {
    const server = new HostServer({ core, protoDir, token, maxClients, bookmarkIntervalMs, log });
    shutdown = () => server.shutdown();
    const address = listen.replace(/^https?:\/\//, "");
    server.listen(address).then(
      (port) => {
        const host = address.slice(0, address.lastIndexOf(":"));
        console.log(`listening on http://${host}:${port} (sync ${sync}, epoch ${core.epoch})`);
      },
      (err) => {
        console.error(`cannot listen on ${listen}: ${err.message}`);
        process.exit(1);
      },
    );
  }
  let stopping = false;
  const stop = () => {
    if (stopping) process.exit(1);
    stopping = true;
    shutdown().then(() => process.exit(0));
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main(process.argv.slice(2));
