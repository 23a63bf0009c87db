"""Hook servers: programs that implement the hook contract (proto/upparat/hooks/v1/hooks.proto).

They depend on the contract (the generated `upparat.hooks.v1` stubs) and nothing else of
upparat: a hook server in another language is a peer of these, not a second-class one.
"""
