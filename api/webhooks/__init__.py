"""Webhook endpoints, the tenant's signing secret, and the delivery outbox."""
