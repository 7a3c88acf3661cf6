"""`lifeops-mesh request KEY JSON`: request/response by contract key."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import uuid

from lifeops_mesh.cli.common import Subparsers, add_tool_args, the_contract
from lifeops_mesh.local import tool_broker_url
from mesh import ConfigError, DecodeError, MeshClient, codec
from mesh.settings import parse_broker_url


def register(sub: Subparsers) -> None:
    p = add_tool_args(
        sub.add_parser("request", help="request/response by contract key, printing the reply")
    )
    p.add_argument("key", nargs="?", help="contract key, e.g. activities_log (see --list)")
    p.add_argument("json", nargs="?", help="the request payload")
    p.add_argument("--list", action="store_true", help="list the request keys and exit")
    p.add_argument("--timeout", type=float, help="seconds (default: the contract's)")
    p.set_defaults(func=cmd_request)


def cmd_request(args: argparse.Namespace) -> int:
    contract = the_contract()
    if args.list:
        for e in contract.topics.values():
            if e.kind == "request":
                print(f"{e.key:<22} {e.topic:<34} {e.schema}")
        return 0
    if not args.key or args.json is None:
        raise ConfigError("usage: lifeops-mesh request KEY JSON (the keys: request --list)")
    found = contract.topics.get(args.key)
    if found is None or found.kind != "request":
        raise ConfigError(f"{args.key!r} is not a request key (the keys: request --list)")
    entry = found
    url = tool_broker_url(args.broker, args.data)
    try:
        payload = codec.decode(args.json.encode("utf-8"), entry.schema_type, entry.format)
    except DecodeError as exc:
        raise ConfigError(f"payload for {args.key} ({entry.schema}): {exc}") from exc

    # The same command run again is the same request: a fixed reply topic of the account and
    # correlation data from the request itself. So a retry after a timeout counts once even
    # without an activity_id or source_ref (within the agents' keyless window, 10 minutes).
    principal = parse_broker_url(url).username or "tester"
    reply_topic = contract.topic("reply", requester=principal, request="cli")
    correlation = hashlib.sha256(args.key.encode() + b"\0" + codec.encode(payload)).digest()[:16]

    async def go() -> int:
        trace_id = uuid.uuid4().hex
        async with MeshClient(url, contract, reply_topic=reply_topic) as client:
            print(f"trace {trace_id}", file=sys.stderr)  # connected: the request goes out
            reply = await client.request(
                args.key, payload, timeout=args.timeout, trace_id=trace_id, correlation=correlation
            )
        print(codec.encode(reply).decode())
        return 0 if getattr(reply, "success", True) else 1

    return asyncio.run(go())
