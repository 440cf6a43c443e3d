"""gRPC transport for the host core (PROTOCOL.md §17.2), serving the demo app.

    python3 server.py --listen 127.0.0.1:PORT [--token-file F] \
        [--secret-token TOKEN] [--sync patch|snapshot]

The generated protobuf modules (package `cosystem.worker.v1`) must be
importable, e.g. through PYTHONPATH; run_conformance.sh generates them.

All protocol logic lives in host_core.HostCore; this file only moves bytes
between gRPC streams and the core, ticks it once per bookmark interval, and
ends streams with the statuses of §17.2. Everything runs on one asyncio
event loop, so the core is never entered concurrently (commits serialised, V2).
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import signal
import sys

import grpc

import demo
from host_core import Close, HostCore, decode
from host_options import add_host_arguments, host_config

SESSION_METHOD = "/cosystem.worker.v1.HostService/Session"


class HostService(grpc.GenericRpcHandler):
    """Serves HostService/Session: one core session per stream."""

    def __init__(self, core: HostCore, token: str | None) -> None:
        self.core = core
        self.token = token
        self.wakeups: dict[int, asyncio.Event] = {}

    def service(self, handler_call_details):
        if handler_call_details.method != SESSION_METHOD:
            return None
        # No (de)serializers: undecodable bytes reach this transport, which
        # decides what to do with them (H14), instead of failing in grpcio.
        return grpc.stream_stream_rpc_method_handler(self.session)

    def wake(self) -> None:
        """Wake the writers of every session the core has new output for."""
        for sid in self.core.take_dirty():
            event = self.wakeups.get(sid)
            if event is not None:
                event.set()

    def authorized(self, metadata) -> bool:
        """§17.2: exactly one `authorization` entry, `Bearer` (any case), one
        space, then the token, compared exactly and in constant time."""
        values = [value for key, value in metadata or () if key == "authorization"]
        if len(values) != 1 or not isinstance(values[0], str):
            return False
        scheme, _, token = values[0].partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.encode(), self.token.encode())

    async def session(self, requests, context) -> None:
        # §17.2: refusals end the stream before any HostMessage is sent.
        if self.token is not None and not self.authorized(context.invocation_metadata()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        sid = self.core.open_session()
        if sid is None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "client limit reached")
        wake = asyncio.Event()
        self.wakeups[sid] = wake
        closing: list[Close] = []
        reader = asyncio.ensure_future(self.read(sid, requests, closing, wake))
        try:
            # §17.2 (opening): response headers as soon as the stream is
            # accepted; grpcio otherwise sends them with the first message,
            # which a client that waits for them before its SyncRequest would
            # never see.
            await context.send_initial_metadata(())
            while True:
                if closing:
                    close = closing[0]
                    await context.abort(getattr(grpc.StatusCode, close.status), close.detail)
                # §15: a result counts as in flight until it is taken out here;
                # HTTP/2 flow control then holds this writer when the client
                # stops reading, and the core's queue grows from there.
                message = self.core.poll_transmit(sid)
                if message is not None:
                    await context.write(message.SerializeToString())
                    continue
                if self.core.finished(sid):
                    return  # H16: half-closed and everything owed sent: status OK
                wake.clear()
                await wake.wait()
        finally:
            reader.cancel()
            self.core.close_session(sid)  # H16: discard what is still queued
            del self.wakeups[sid]

    async def read(self, sid: int, requests, closing: list[Close], wake: asyncio.Event) -> None:
        """Feed the request stream to the core until it ends or must close."""
        try:
            async for data in requests:
                message = decode(data)
                if message is None:
                    # H14 leaves undecodable bytes to the transport; this one
                    # ends the stream with the status of §17.2.
                    closing.append(Close("INVALID_ARGUMENT", "bytes that are not a ClientMessage"))
                    break
                close = self.core.receive(sid, message)
                self.wake()
                if close is not None:
                    closing.append(close)
                    break
            else:
                self.core.half_close(sid)  # H16
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the request stream broke
            closing.append(Close("CANCELLED", f"request stream failed: {type(exc).__name__}"))
        self.wake()
        wake.set()

    async def ticker(self, interval: float) -> None:
        """H10: the core has no clock; tick it once per bookmark interval."""
        while True:
            await asyncio.sleep(interval)
            self.core.tick()
            self.wake()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="cosystem-worker v1 host serving the demo app over gRPC")
    p.add_argument("--listen", required=True,
                   help="HOST:PORT to listen on (plaintext HTTP/2); port 0 picks a free one")
    p.add_argument("--token-file",
                   help="file holding the bearer token clients must present (§17.2); "
                        "surrounding whitespace is not part of the token")
    add_host_arguments(p)
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    token = None
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            token = f.read().strip()
    config = host_config(args)
    core = HostCore(config, demo.demo_modules(args.secret_token))
    service = HostService(core, token)
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", config.max_message_size),   # §17.2, §15
        ("grpc.max_send_message_length", config.max_message_size),
        # Fail to start, rather than share, when another process holds the port.
        ("grpc.so_reuseport", 0),
        # §17.2 keepalive: accept client PINGs every 30 s (grpcio allows one
        # per 5 minutes by default).
        ("grpc.http2.min_ping_interval_without_data_ms", 30000),
    ])
    server.add_generic_rpc_handlers((service,))
    port = server.add_insecure_port(args.listen)
    if port == 0:
        raise SystemExit(f"cannot listen on {args.listen}")
    await server.start()
    # With port 0 the system picks a free port; the line names the one bound,
    # which run_conformance.sh reads, so no port is ever guessed and raced for.
    host = args.listen.rpartition(":")[0]
    print(f"listening on http://{host}:{port}, epoch {config.epoch}, sync {config.sync_mode}",
          file=sys.stderr, flush=True)
    ticker = asyncio.ensure_future(service.ticker(args.bookmark_interval))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    ticker.cancel()
    await server.stop(grace=None)  # end open sessions at once


def main() -> None:
    asyncio.run(serve(parse_args(sys.argv[1:])))


if __name__ == "__main__":
    main()
