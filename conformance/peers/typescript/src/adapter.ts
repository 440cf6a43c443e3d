// Conformance adapter (spec/CONFORMANCE.md §6): JSON lines on stdin/stdout around ClientCore.
// Logs go to stderr only.

import * as readline from 'readline';
import { ClientCore, ClientEvent, Outcome } from './core';
import { JsonValue, JsonObject, parseJson, stringifyJson, isObject } from './json';
import { hostMessageFromJson, clientMessageToJson, ERROR_CODE_NAMES } from './envelope';

/** A JSON text fragment to splice into a reply verbatim (exact big integers, -0). */
class Raw {
  constructor(readonly text: string) {}
}

/** Serialises a reply: plain JS values, with Raw fragments inserted as-is. */
function render(v: unknown): string {
  if (v instanceof Raw) return v.text;
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') return JSON.stringify(v);
  if (typeof v === 'bigint') return JSON.stringify(v.toString());
  if (Array.isArray(v)) return '[' + v.map(render).join(',') + ']';
  const o = v as Record<string, unknown>;
  return '{' + Object.keys(o).filter((k) => o[k] !== undefined).map((k) => JSON.stringify(k) + ':' + render(o[k])).join(',') + '}';
}

function kebab(code: number): string {
  return (ERROR_CODE_NAMES[code] ?? 'ERROR_CODE_INTERNAL').slice('ERROR_CODE_'.length).toLowerCase().replace(/_/g, '-');
}

function num(v: JsonValue | undefined, dflt: number): number {
  if (v === undefined || v === null) return dflt;
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  if (typeof v === 'string' && v.trim() !== '' && !isNaN(Number(v))) return Number(v);
  throw new Error(`not a number: ${String(v)}`);
}

function str(v: JsonValue | undefined, dflt: string): string {
  if (v === undefined || v === null) return dflt;
  if (typeof v !== 'string') throw new Error('not a string');
  return v;
}

class Adapter {
  core: ClientCore | null = null;
  now = 0;
  labels = new Map<number, string>(); // handle -> label
  handles = new Map<string, number>(); // label -> handle
  line?: string;
  spans?: WeakMap<object, [number, number]>;

  handle(cmd: JsonObject): Record<string, unknown> {
    const op = cmd.get('op');
    if (op === 'start') {
      const cfg = cmd.get('config');
      const c = isObject(cfg) ? cfg : new Map<string, JsonValue>();
      this.now = 0;
      this.core = new ClientCore({
        peerId: str(c.get('peer_id'), 'c1'),
        hostId: str(c.get('host_id'), ''),
        capability: str(c.get('capability'), ''),
        maxPendingCalls: num(c.get('max_calls_in_flight'), 1024),
        syncRetryMs: num(c.get('sync_retry_ms'), 2000),
        hostSilenceMs: c.get('host_silence_ms') == null ? null : num(c.get('host_silence_ms'), 0),
        maxCallSize: num(c.get('max_call_bytes'), 4 * 1024 * 1024),
      }, this.now);
      return this.collect({});
    }
    const core = this.core;
    if (!core) return { error: 'no start command yet' };
    const extra: Record<string, unknown> = {};
    switch (op) {
      case 'deliver': {
        const msg = cmd.get('message');
        if (msg === undefined) return { error: 'deliver without message (only the canonical JSON form is supported)' };
        core.handleHostMessage(hostMessageFromJson(msg), this.now);
        break;
      }
      case 'call': {
        const label = str(cmd.get('call'), '');
        let argsJson: string;
        if (cmd.has('args_json')) argsJson = str(cmd.get('args_json'), '');
        else if (cmd.has('args')) {
          // Relay the arguments' own text: re-serialising would turn 1.0 into 1 (JS numbers
          // have no integer/float distinction, but J7/§19 make it meaningful to the host).
          const args = cmd.get('args') as JsonValue;
          const span = typeof args === 'object' && args !== null ? this.spans?.get(args) : undefined;
          argsJson = span && this.line !== undefined ? this.line.slice(span[0], span[1]) : stringifyJson(args);
        }
        else argsJson = '';
        const t = cmd.get('timeout_ms');
        const deadline = t === undefined || t === null ? null : this.now + num(t, 0);
        const r = core.call(str(cmd.get('module'), ''), str(cmd.get('method'), ''), argsJson, deadline);
        this.labels.set(r.handle, label);
        this.handles.set(label, r.handle);
        if (r.callId !== undefined) extra.call_id = r.callId.toString();
        break;
      }
      case 'cancel': {
        const h = this.handles.get(str(cmd.get('call'), ''));
        if (h !== undefined) core.cancel(h);
        break;
      }
      case 'advance':
        this.now += num(cmd.get('ms'), 0);
        core.tick(this.now);
        break;
      case 'connection_lost':
        core.connectionLost();
        break;
      case 'reconnected':
        core.reconnected(this.now);
        break;
      case 'envelopes_lost':
        core.envelopesLost(num(cmd.get('count'), 0), this.now);
        break;
      case 'dispose':
        core.dispose();
        break;
      case 'report': {
        const view = core.view;
        const v = core.mirrorVersion;
        extra.state = {
          mirror: view ? new Raw(stringifyJson(view)) : null,
          version: v === null ? null : v.toString(),
          epoch: core.mirrorEpoch,
          pending: core.pendingCalls,
          timer_ms: core.nextTimer(),
        };
        break;
      }
      default:
        return { error: `unknown op ${JSON.stringify(op)}` };
    }
    return this.collect(extra);
  }

  collect(extra: Record<string, unknown>): Record<string, unknown> {
    const core = this.core!;
    const sent: unknown[] = [];
    for (let m = core.pollTransmit(); m; m = core.pollTransmit()) sent.push(clientMessageToJson(m));
    const events: unknown[] = [];
    for (let e = core.pollEvent(); e; e = core.pollEvent()) events.push(this.event(e));
    return { ...extra, sent, events };
  }

  event(e: ClientEvent): Record<string, unknown> {
    switch (e.type) {
      case 'ready':
        return { type: 'ready' };
      case 'state-changed':
        return { type: 'state_changed', version: e.version.toString() };
      case 'conflict':
        return { type: 'conflict', reason: e.reason, current_version: e.currentVersion.toString(), incoming_version: e.incomingVersion.toString() };
      case 'notice':
        switch (e.kind) {
          case 'epoch-changed': return { type: 'notice', kind: e.kind, old: e.old, new: e.new };
          case 'unexpected-result': return { type: 'notice', kind: e.kind, call_id: e.callId.toString() };
          case 'malformed-message': return { type: 'notice', kind: e.kind, detail: e.detail };
          case 'overflow': return { type: 'notice', kind: e.kind, version: e.version.toString() };
          case 'envelopes-lost': return { type: 'notice', kind: e.kind, count: String(e.count) };
          case 'host-silent': return { type: 'notice', kind: e.kind, silence_ms: String(e.silenceMs) };
        }
        return { type: 'notice' };
      case 'settled':
        return this.settled(e.handle, e.outcome);
    }
  }

  settled(handle: number, o: Outcome): Record<string, unknown> {
    const base: Record<string, unknown> = { type: 'settled', call: this.labels.get(handle) ?? String(handle) };
    if (o.ok) {
      base.ok = new Raw(stringifyJson(o.value));
      base.state_version = o.stateVersion.toString();
    } else {
      base.error = kebab(o.code);
      base.message = o.message;
      base.state_version = o.stateVersion === undefined ? null : o.stateVersion.toString();
    }
    return base;
  }
}

function main(): void {
  const adapter = new Adapter();
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  rl.on('line', (line) => {
    if (line.trim() === '') return;
    let reply: Record<string, unknown>;
    try {
      // Our own parser: JSON.parse would round big integers in `args` (J10).
      const spans = new WeakMap<object, [number, number]>();
      const cmd = parseJson(line, { rejectLoneSurrogates: false, spans });
      if (!isObject(cmd)) throw new Error('command is not an object');
      adapter.line = line;
      adapter.spans = spans;
      reply = adapter.handle(cmd);
    } catch (e) {
      process.stderr.write(`adapter: ${(e as Error).stack ?? e}\n`);
      reply = { error: String((e as Error).message ?? e) };
    }
    process.stdout.write(render(reply) + '\n');
  });
  rl.on('close', () => process.exit(0));
}

main();
