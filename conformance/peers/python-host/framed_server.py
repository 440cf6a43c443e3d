"""Framed byte-stream transport for the host core (PROTOCOL.md §17.3), serving
the demo app on a TCP (or Unix-socket) listener.

    python3 framed_server.py --listen 127.0.0.1:PORT [--secret-token TOKEN] \
        [--sync patch|snapshot] [--bookmark-interval S] [--first-frame-timeout S]

`--listen` takes HOST:PORT, tcp://HOST:PORT or unix:PATH. There is no
`--token-file`: framing carries no authentication (FB8); access is governed
by the listener (bind it to loopback, or put it behind a secured tunnel).

The generated protobuf modules (package `cosystem.worker.v1`) must be
importable, e.g. through PYTHONPATH; run_conformance.sh generates them.

All protocol logic lives in host_core.HostCore, exactly as for server.py;
this file only cuts the byte stream into frames (FB1-FB5), opens one core
session per connection once its first frame has arrived (FB6), writes the
core's envelopes as frames, ticks the core once per bookmark interval (H10),
and closes connections. Everything runs on one asyncio event loop, so the
core is never entered concurrently (commits serialised, V2).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections import OrderedDict

import demo
from host_core import MiB, HostCore, decode
from host_options import add_host_arguments, host_config

log = logging.getLogger("framed_server")

PREFIX = 4                       # FB1: 4-byte big-endian length
MIN_MESSAGE_SIZE = 1 * MiB       # FB3, §15: never less than 1 MiB


# ---- frames (FB1-FB5) ---------------------------------------------------------

class StreamEnded(Exception):
    """The stream ended in the middle of a frame (FB5: a connection loss), or
    broke (a reset or read error)."""

    def __init__(self, why: str, received: bytes = b"") -> None:
        super().__init__(why)
        self.received = received  # what was read of the unfinished frame (FB9)


class FrameTooLarge(Exception):
    """FB4: a length prefix over the receiver's limit."""

    def __init__(self, size: int, limit: int, prefix: bytes) -> None:
        super().__init__(f"frame of {size} bytes over the limit of {limit}")
        self.size, self.limit, self.prefix = size, limit, prefix


async def read_frame(reader: asyncio.StreamReader, limit: int) -> bytes | None:
    """The body of the next frame (b"" for an empty frame, FB2), or None when
    the stream ended cleanly between frames."""
    try:
        prefix = await reader.readexactly(PREFIX)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise StreamEnded("the stream ended inside a length prefix", e.partial) from None
    except (ConnectionError, OSError) as e:
        raise StreamEnded(f"the connection broke: {e}") from None
    size = int.from_bytes(prefix, "big")
    if size > limit:
        # FB4: the body is neither read nor buffered; the caller closes.
        raise FrameTooLarge(size, limit, prefix)
    if size == 0:
        return b""
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as e:
        raise StreamEnded(f"the stream ended inside a frame of {size} bytes",
                          prefix + e.partial) from None
    except (ConnectionError, OSError) as e:
        raise StreamEnded(f"the connection broke: {e}") from None


def frame(body: bytes) -> bytes:
    """FB1: the 4-byte big-endian length, then the envelope's bytes."""
    return len(body).to_bytes(PREFIX, "big") + body


def other_protocol(received: bytes) -> str | None:
    """FB9: the protocol whose client sent these first bytes, if recognised.
    Only consulted before a connection's first frame, for bytes that failed
    as frames."""
    if received.startswith(b"PRI "):
        return "HTTP/2 (a gRPC client?)"
    if received[:4] in (b"GET ", b"POST", b"PUT ", b"HEAD", b"HTTP", b"DELE", b"OPTI",
                        b"PATC", b"CONN", b"TRAC"):
        return "HTTP/1"
    if len(received) >= 3 and received[0] in (21, 22) and received[1] == 3 and received[2] <= 4:
        return "TLS"
    return None


class RateLimited:
    """Logs at most one message a second (FB6 client limit, FB9)."""

    def __init__(self) -> None:
        self.last = float("-inf")

    def log(self, level: int, message: str, *args) -> None:
        now = time.monotonic()
        if now - self.last >= 1.0:
            self.last = now
            log.log(level, message, *args)
        else:
            log.debug(message, *args)


# ---- the listener ---------------------------------------------------------------

class FramedHost:
    """Serves framed connections, one core session per connection (FB6)."""

    def __init__(self, core: HostCore, first_frame_timeout: float, max_waiting: int) -> None:
        self.core = core
        self.limit = core.config.max_message_size            # FB3: the frame limit
        self.first_frame_timeout = first_frame_timeout
        self.max_waiting = max_waiting
        # FB6: connections still waiting for their first frame, oldest first.
        self.waiting: OrderedDict[int, asyncio.StreamWriter] = OrderedDict()
        self.wakeups: dict[int, asyncio.Event] = {}
        self.connections: set[asyncio.StreamWriter] = set()
        self.next_connection = 1
        self.limit_warning = RateLimited()
        self.protocol_notice = RateLimited()

    def wake(self) -> None:
        """Wake the writers of every session the core has new output for."""
        for sid in self.core.take_dirty():
            event = self.wakeups.get(sid)
            if event is not None:
                event.set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or "unix socket"
        self.connections.add(writer)
        try:
            first = await self.first_frame(reader, writer, peer)
            if first is None:
                writer.transport.abort()
                return
            # FB6: the session opens with the first complete frame; at the
            # client limit (§15) there is no envelope to say so: close it,
            # sending nothing.
            sid = self.core.open_session()
            if sid is None:
                self.limit_warning.log(
                    logging.WARNING, "client limit (%d) reached: closing a new connection "
                    "from %s without a session", self.core.config.max_clients, peer)
                writer.transport.abort()
                return
            await self.serve(sid, first, reader, writer, peer)
        finally:
            self.connections.discard(writer)

    async def first_frame(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          peer) -> bytes | None:
        """FB6: the connection's first non-empty frame, read within the
        deadline, or None when the connection is to be closed without a
        session. Empty frames (FB2) do not count as the first."""
        key = self.next_connection
        self.next_connection += 1
        # FB6: bound the connections waiting for their first frame; at the
        # bound, the one that has waited longest goes, not the newcomer.
        while len(self.waiting) >= self.max_waiting:
            _, oldest = self.waiting.popitem(last=False)
            log.debug("%d connections wait for their first frame: closing the oldest",
                      self.max_waiting)
            oldest.transport.abort()  # its reader then sees the end of its stream
        self.waiting[key] = writer

        async def until_first() -> bytes | None:
            while True:
                body = await read_frame(reader, self.limit)
                if body is None or body:
                    return body
        try:
            body = await asyncio.wait_for(until_first(), self.first_frame_timeout)
        except asyncio.TimeoutError:
            log.debug("%s: no first frame within %g s: closed", peer, self.first_frame_timeout)
            return None
        except (FrameTooLarge, StreamEnded) as e:
            if key not in self.waiting:
                log.debug("%s: closed to make room for a newer connection", peer)
            else:
                received = e.prefix if isinstance(e, FrameTooLarge) else e.received
                self.unframed(peer, str(e), received)
            return None
        finally:
            self.waiting.pop(key, None)
        if body is None:
            log.debug("%s: closed before its first frame", peer)
        return body

    def unframed(self, peer, why: str, received: bytes) -> None:
        """Bytes before the first frame that fail as frames (FB4, FB5): FB9
        lets the host name another protocol, logged at info at most once a
        second per listener; anything else at debug."""
        protocol = other_protocol(received)
        if protocol is not None:
            self.protocol_notice.log(
                logging.INFO, "%s: a client of another protocol (%s) on this framed "
                "listener: closed", peer, protocol)
        else:
            log.debug("%s: %s before its first frame: closed", peer, why)

    async def serve(self, sid: int, first: bytes, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, peer) -> None:
        """One session: a reader task feeding the core, and this writer loop
        draining it, until either ends the connection."""
        wake = asyncio.Event()
        self.wakeups[sid] = wake
        failure: list[str] = []
        reading = asyncio.ensure_future(self.read(sid, first, reader, writer, failure, wake))
        orderly = False
        try:
            while True:
                if failure:
                    break
                # §15: a result counts as in flight until it is taken out
                # here; drain() holds this writer while the client does not
                # read, and the core's queue grows from there.
                message = self.core.poll_transmit(sid)
                if message is not None:
                    body = message.SerializeToString()
                    if len(body) > self.limit:
                        # FB3: the core sizes what it sends against this
                        # limit, so this would be a bug: refuse to write it.
                        failure.append(f"an envelope of {len(body)} bytes over the frame "
                                       f"limit of {self.limit}")
                        break
                    writer.write(frame(body))
                    await writer.drain()
                    continue
                if self.core.finished(sid):
                    orderly = True  # H16: input ended, and everything owed was sent
                    break
                wake.clear()
                await wake.wait()
        except (ConnectionError, OSError) as e:
            failure.append(f"the connection broke: {e}")
        finally:
            reading.cancel()
            self.core.close_session(sid)  # H16: discard what is still queued
            del self.wakeups[sid]
            self.wake()
        if orderly:
            log.debug("%s: session ended after the client closed its input", peer)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 10)
            except (asyncio.TimeoutError, ConnectionError, OSError):
                writer.transport.abort()
        else:
            log.debug("%s: session closed: %s", peer, failure[0] if failure else "host stopped")
            writer.transport.abort()

    async def read(self, sid: int, first: bytes, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter, failure: list[str], wake: asyncio.Event) -> None:
        """Feed the connection's frames to the core until its input ends or
        the connection must close."""
        body: bytes | None = first
        try:
            while True:
                if body is None:
                    self.core.half_close(sid)  # H16: the end of the input
                    break
                if body:  # FB2: an empty frame is an envelope the core would ignore
                    message = decode(body)
                    if message is None:
                        # FB5, H14: malformed; this host closes the connection.
                        failure.append("a frame that is not a ClientMessage")
                        break
                    close = self.core.receive(sid, message)
                    self.wake()
                    if close is not None:  # H7 flooding, §15 unread results
                        failure.append(close.detail)
                        break
                body = await read_frame(reader, self.limit)
        except (FrameTooLarge, StreamEnded) as e:  # FB4; FB5 (a connection loss)
            failure.append(str(e))
        if failure:
            # Close now: the writer may be held in drain() by a client that
            # does not read (the very client H7 flooding closes), and would
            # otherwise never see the failure.
            writer.transport.abort()
        self.wake()
        wake.set()

    async def ticker(self, interval: float) -> None:
        """H10: the core has no clock; tick it once per bookmark interval."""
        while True:
            await asyncio.sleep(interval)
            self.core.tick()
            self.wake()

    def close_all(self) -> None:
        """End every connection at once (the host shutting down)."""
        for writer in list(self.connections):
            writer.transport.abort()


def parse_listen(listen: str) -> tuple[str, str | int | None]:
    """("unix", PATH) or ("tcp", (HOST, PORT))."""
    for prefix in ("unix://", "unix:"):
        if listen.startswith(prefix) and listen[len(prefix):]:
            return "unix", listen[len(prefix):]
    address = listen[len("tcp://"):] if listen.startswith("tcp://") else listen
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise SystemExit(f"--listen {listen}: expected HOST:PORT, tcp://HOST:PORT or unix:PATH")
    return "tcp", (host.strip("[]"), int(port))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="cosystem-worker v1 host serving the demo app over framed byte streams "
                    "(PROTOCOL.md §17.3). Framing carries no authentication (FB8).")
    p.add_argument("--listen", required=True,
                   help="HOST:PORT or tcp://HOST:PORT (TCP; port 0 picks a free one), "
                        "or unix:PATH (a Unix socket)")
    add_host_arguments(p)
    p.add_argument("--max-clients", type=int, default=10_000, help="sessions at once (§15)")
    p.add_argument("--max-message-size", type=int, default=4 * MiB,
                   help="bytes; the frame limit (FB3, §15), at least 1 MiB")
    p.add_argument("--first-frame-timeout", type=float, default=10.0,
                   help="seconds a new connection has to send its first frame (FB6)")
    p.add_argument("--max-waiting-connections", type=int, default=256,
                   help="connections that may wait for their first frame at once (FB6)")
    p.add_argument("--verbose", action="store_true", help="log every connection's end")
    args = p.parse_args(argv)
    if args.max_message_size < MIN_MESSAGE_SIZE:
        p.error(f"--max-message-size must be at least {MIN_MESSAGE_SIZE} (FB3, §15)")
    if args.max_waiting_connections < 1 or args.max_clients < 1:
        p.error("--max-waiting-connections and --max-clients must be at least 1")
    return args


async def serve(args: argparse.Namespace) -> None:
    config = host_config(
        args,
        max_message_size=args.max_message_size,                         # FB3, §15
        max_unread_result_bytes=8 * args.max_message_size,              # §15
        max_clients=args.max_clients,
    )
    core = HostCore(config, demo.demo_modules(args.secret_token))
    host = FramedHost(core, args.first_frame_timeout, args.max_waiting_connections)
    kind, address = parse_listen(args.listen)
    try:
        if kind == "unix":
            server = await asyncio.start_unix_server(host.handle, path=address)
        else:
            server = await asyncio.start_server(host.handle, host=address[0], port=address[1],
                                                reuse_address=True)
    except OSError as e:
        raise SystemExit(f"cannot listen on {args.listen}: {e}")
    if kind == "unix":
        bound = f"unix:{address}"
    else:
        # With port 0 the system picks a free port; name the one bound, which
        # run_conformance.sh reads, so no port is ever guessed and raced for.
        bound_host, bound_port = server.sockets[0].getsockname()[:2]
        if ":" in bound_host:
            bound_host = f"[{bound_host}]"
        bound = f"tcp://{bound_host}:{bound_port}"
    log.info("listening for framed streams on %s, epoch %s, sync %s",
             bound, config.epoch, config.sync_mode)
    ticker = asyncio.ensure_future(host.ticker(args.bookmark_interval))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    ticker.cancel()
    server.close()
    host.close_all()  # end open sessions at once
    await server.wait_closed()


def main() -> None:
    args = parse_args(sys.argv[1:])
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
