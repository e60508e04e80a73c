"""A recommendation service that enriches item ids by asking the inventory service."""
