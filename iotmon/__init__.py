"""iotmon: operations of the platform (settings, local stack, migrations, command line)."""

__version__ = "0.1.0"
