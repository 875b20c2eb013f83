"""The `ordersync` command: on top of every other layer."""
