"""One-shot GetInfo for `upparat check-config`: is the hook server there, and what does it offer.

Catches gRPC errors itself (like the client driver) and returns text for people.
"""

from __future__ import annotations

import attrs
import grpc

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


def grpc_target(endpoint: str) -> str:
    """The gRPC target of a config endpoint (`unix:///p`, `unix:/p` or `host:port`)."""
    return endpoint


def fetch_info(endpoint: str, *, timeout: float) -> ServerInfo | Unreachable:
    try:
        with grpc.insecure_channel(grpc_target(endpoint)) as channel:
            stub = hooks_pb2_grpc.IdentityServiceStub(channel)
            reply = stub.GetInfo(hooks_pb2.GetInfoRequest(), timeout=timeout, wait_for_ready=True)
    except grpc.RpcError as err:
        # Errors raised by a call are also grpc.Call objects with a code and details.
        code = getattr(err, "code", None)
        details = getattr(err, "details", None)
        name = code().name if callable(code) else "UNKNOWN"
        text = details() if callable(details) else str(err)
        return Unreachable(reason=f"{name}: {text}")
    return ServerInfo(
        server_name=reply.server_name,
        server_version=reply.server_version,
        api_versions=tuple(reply.api_versions),
        hooks=tuple(
            hooks_pb2.Hook.Name(h).removeprefix("HOOK_").lower() for h in reply.hooks
        ),
        manifest=tuple(sorted(reply.manifest.items())),
    )
