"""One-shot GetInfo outside the daemon's loop: for `upparat check-config` (values for people),
and the daemon's start-up GetInfo, run as a child process
(``python -m upparat.hooks.info TARGET --timeout S``) that prints its answer as one JSON
line, so that an idle daemon never loads gRPC (upparat.hooks.ondemand, issue 16).

Shares the client driver's target, options, call and error mapping; decides nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import attrs
import grpc

from upparat.hooks.client import channel_options, channel_target, get_info, rpc_status
from upparat.hooks.v1 import hooks_pb2, hooks_pb2_grpc
from upparat.hooks.values import answer_json


@attrs.frozen(kw_only=True)
class ServerInfo:
    server_name: str
    server_version: str
    api_versions: tuple[str, ...]
    hooks: tuple[str, ...]
    manifest: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        lines = [
            f"  server:       {self.server_name} {self.server_version}",
            f"  api versions: {', '.join(self.api_versions) or '(none)'}",
            f"  hooks:        {', '.join(self.hooks) or '(none)'}",
        ]
        lines += [f"  {key}: {value}" for key, value in self.manifest]
        return "\n".join(lines)


@attrs.frozen(kw_only=True)
class Unreachable:
    reason: str


def fetch_info(endpoint: str, *, timeout: float) -> ServerInfo | Unreachable:
    try:
        with grpc.insecure_channel(channel_target(endpoint), options=channel_options()) as channel:
            stub = hooks_pb2_grpc.IdentityServiceStub(channel)
            reply = stub.GetInfo(hooks_pb2.GetInfoRequest(), timeout=timeout, wait_for_ready=True)
    except grpc.RpcError as err:
        code, details = rpc_status(err)
        return Unreachable(reason=f"{code.name}: {details}")
    return ServerInfo(
        server_name=reply.server_name,
        server_version=reply.server_version,
        api_versions=tuple(reply.api_versions),
        hooks=tuple(hooks_pb2.Hook.Name(h).removeprefix("HOOK_").lower() for h in reply.hooks),
        manifest=tuple(sorted(reply.manifest.items())),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The start-up child: one GetInfo exactly as the daemon's client makes it, on stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m upparat.hooks.info",
        description="One GetInfo to the hook server at TARGET (a gRPC target), printed as"
        " JSON for the upparat daemon.",
    )
    parser.add_argument("target")
    parser.add_argument("--timeout", type=float, required=True, help="seconds GetInfo may take")
    args = parser.parse_args(argv)
    with grpc.insecure_channel(args.target, options=channel_options()) as channel:
        answer = get_info(hooks_pb2_grpc.IdentityServiceStub(channel), args.timeout)
    print(answer_json(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
