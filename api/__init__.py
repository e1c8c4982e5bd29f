"""The web tier of OmniPersona: Flask app, schema, object stores, admin CLI.

Imports nothing that imports torch (the `omnipersona` package does): the API starts fast and stays
light. `workers/` joins this package's schema and services to the ML library."""
