"""Errors of the store adapters (SQLite and PostgreSQL).

These live here only until the lead moves them to firmware/core/errors.py and maps them in
firmware/api/status.py: StoreUnavailable to UNAVAILABLE with reason STORE_UNAVAILABLE,
AuditHeadRegression and SchemaNewerThanCode to the node's side (INTERNAL is never used for them:
an audit head that would go back means the audit log or the state was tampered with, and a
schema newer than the code means the node must not start).

Rules:
- A driver error (sqlite3, psycopg, psycopg_pool) never leaves a store: connection refused,
  server gone, pool timeout, disk I/O errors become StoreUnavailable; a uniqueness violation
  becomes StoreConflict (firmware.core.ports).
- Messages name the failure class and SQLSTATE, never a password, a URL or a stored value.
"""

from __future__ import annotations

from firmware.core.errors import KmsError


class StoreUnavailable(KmsError):
    """The state store cannot be reached or did not complete the operation; retry later.

    Nothing of a write that raised this was committed, except when the connection was lost
    during COMMIT itself (PostgreSQL cannot tell then): callers treat such a write as failed.
    """


class AuditHeadRegression(KmsError):
    """`set_audit_head` would lower the stored audit head, or replace it at the same count
    with another MAC: records the state counted would vanish from the chain."""


class SchemaNewerThanCode(KmsError):
    """The state database was migrated by a newer node; this node refuses to use it."""
