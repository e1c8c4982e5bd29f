"""Celery workers: they receive job ids, read the job rows, call the ML library (`omnipersona`),
and write progress and results back to the database and the object store."""
