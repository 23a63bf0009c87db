"""Tests of the drivers in `upparat.io`, against real sockets, files and servers."""
