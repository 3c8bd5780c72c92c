"""What a point leaves behind and who may see it: the MLflow run record with retries
(tracking), whether this user may reach and write the store (access), what a record may hold
(redaction), where the code came from (provenance), the study's saved view and links (view),
the shared server and its users (server, users) and `make ui` (ui).

May import: settings.
"""
