"""upparat: a firmware update agent for embedded Linux devices driven by AWS IoT Jobs."""

__version__ = "2.0.0.dev0"
