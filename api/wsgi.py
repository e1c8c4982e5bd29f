"""WSGI entry point for gunicorn (`gunicorn api.wsgi:app`): settings from the environment."""

from .app import create_app
from .logging_setup import configure_logging

configure_logging()  # JSON lines on stderr (OMNI_LOG_FORMAT=text for plain)
app = create_app()
