"""The /proxies domain: proxies built by jobs, reusable by id."""
