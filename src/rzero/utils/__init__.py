"""Small shared helpers: seeding, atomic file I/O, metric logging and FSDP sharding."""
