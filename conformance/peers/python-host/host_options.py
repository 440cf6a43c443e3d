"""The command-line options both transports of the Python host take, and the
core configuration they make (server.py: gRPC, framed_server.py: framed
streams)."""
from __future__ import annotations

import argparse
import secrets

import demo
from host_core import HostConfig


def add_host_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the host core and the demo app, whatever the transport."""
    p.add_argument("--secret-token",
                   help="initial token of the private `secret` module (§19.3); "
                        "every later token contains it")
    p.add_argument("--sync", choices=("patch", "snapshot"), default="patch", help="H5 or H6")
    p.add_argument("--peer-id", default="host", help="the host's peer id (§2)")
    p.add_argument("--epoch", help="epoch to use (default: 128 random bits, E1)")
    p.add_argument("--sections", default=",".join(demo.DEFAULT_SECTIONS),
                   help="comma-separated published sections (SI1)")
    p.add_argument("--history-entries", type=int, default=1024, help="history window (H11)")
    p.add_argument("--max-calls-in-flight", type=int, default=1024, help="per session (H7.4)")
    p.add_argument("--bookmark-interval", type=float, default=5.0, help="seconds (H10, §15)")


def host_config(args: argparse.Namespace, **transport) -> HostConfig:
    """The core's configuration from the options above, plus what the
    transport sets itself (`transport`, HostConfig's own field names)."""
    return HostConfig(
        epoch=args.epoch or secrets.token_hex(16),                       # E1
        sync_mode=args.sync,
        sections=tuple(s for s in args.sections.split(",") if s),
        peer_id=args.peer_id,
        history_entries=args.history_entries,
        max_calls_in_flight=args.max_calls_in_flight,
        **transport,
    )
