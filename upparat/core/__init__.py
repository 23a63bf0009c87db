"""The pure job lifecycle: `step(state, event, now) -> (state, commands)`.

No I/O, no threads, no clock, no logging calls. See `machine.py` for the rules.
"""
