"""Batch rendering: many generate renders from one request, a manifest when all are done."""
