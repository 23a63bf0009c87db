"""Drivers: each turns one library's I/O (MQTT, HTTP, disk, sockets) into typed events.

No job lifecycle rules live here; those belong to `upparat.core`.
"""
