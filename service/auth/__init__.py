"""API keys: Bearer tokens hashed at rest; each key belongs to one tenant."""
