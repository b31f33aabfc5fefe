"""Small shared helpers: the user-error type, atomic file writes, hashing."""
