"""The applications built on the library: the world benchmark, the run report, the demo, the web
demo server and the diffusers export. Each has a thin argv wrapper in rzero.cli."""
