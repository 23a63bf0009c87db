"""upparat-hookserver: the reference hook server, which runs upparat 1.12 hook scripts.

It owns script execution (arguments, environment, exit codes, process groups) and the
gRPC side of the contract. It must not import upparat beyond the generated v1 stubs.
"""
