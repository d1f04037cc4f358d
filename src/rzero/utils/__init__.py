"""Small shared helpers: seeding, atomic file I/O and metric logging."""
