"""ordersync's development rig: everything a developer, the tests and the benchmarks run
around the service (sandbox PSPs, fault suite and proxy, dev stack, demo). Installed with
`pip install -e ./devrig`; never part of the runtime wheel or image."""
