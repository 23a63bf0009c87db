"""Generated code of the v1 hook contract; do not edit, run `make generate`.

Import the modules themselves: `from upparat.hooks.v1 import hooks_pb2, hooks_pb2_grpc`.
"""
