"""The local development stack: the processes a device runs, on loopback.

Used by `make demo` and the end-to-end tests: mosquitto, the AWS IoT Jobs
emulator, a file server, the shell hook server and the daemon, each a real
process (the file server is a thread), each stopped by PID; and a RAUC device
(rauc.py) for the example hooks to install on. Not used on devices.
"""
