"""One-shot GetInfo outside the daemon's loop, for `upparat check-config` (values for
people; the daemon asks through its job worker, upparat.worker).

Shares the client driver's target, options and error mapping; decides nothing.
"""

from __future__ import annotations

import attrs
import grpc

from upparat.hooks.client import channel_options, channel_target, rpc_status
from upparat.hooks.v1 import hooks_pb2, hooks_pb2_grpc


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
