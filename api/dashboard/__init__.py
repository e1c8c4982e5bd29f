"""The operators' dashboard at /admin (server-rendered HTML, platform admins only)."""
