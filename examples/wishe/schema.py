"""The Wishe app's user database, as SQLAlchemy Core tables.

Portable to SQLite and PostgreSQL: generic types only, timestamps with time zone (stored
as UTC), and string widths that leave room for a pseudonym (`pn_` + 24 hex characters)
wherever erasure may write one.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()


def _user_fk() -> Column[int]:
    return Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True)


users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    # No unique constraints on phone/email: the app stored them in whatever spelling the
    # client sent, so uniqueness of the raw text would prove nothing.
    Column("phone", String(64)),
    Column("email", String(320)),
    Column("password_hash", String(255)),
    Column("birthday", Date),
    Column("gender", String(16)),
    Column("unit_name", String(255)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("cancelled_at", DateTime(timezone=True)),
    Column("restricted_at", DateTime(timezone=True)),
)

third_party_logins = Table(
    "third_party_logins",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    _user_fk(),
    Column("provider", String(16), nullable=False),
    Column("openid", String(128), nullable=False),
    Column("nickname", String(128)),
    Column("avatar_url", String(512)),
    Column("region", String(128)),
    Column("gender", String(16)),
    Column("email", String(320)),
    UniqueConstraint("provider", "openid", name="uq_third_party_logins_provider_openid"),
)

trusted_devices = Table(
    "trusted_devices",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    _user_fk(),
    # Not unique: one phone can be trusted by two accounts (a shared family device).
    Column("device_id", String(64), nullable=False, index=True),
    Column("name", String(128)),
    Column("type", String(32)),
    Column("last_used_at", DateTime(timezone=True)),
)

location_history = Table(
    "location_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    _user_fk(),
    Column("latitude", Float, nullable=False),
    Column("longitude", Float, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)

contacts = Table(
    "contacts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    _user_fk(),
    Column("contact_name", String(128)),
    Column("contact_phone", String(64)),
)

face_templates = Table(
    "face_templates",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    _user_fk(),
    Column("template", LargeBinary, nullable=False),
    Column("object_key", String(512)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

uploads = Table(
    "uploads",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    _user_fk(),
    Column("s3_key", String(512), nullable=False),
    Column("media_type", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

comments = Table(
    "comments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    _user_fk(),
    # A comment belongs to its author, not to the owner of the upload it is on: when the
    # upload is erased the comment stays, detached (where the database enforces it).
    Column("upload_id", Integer, ForeignKey("uploads.id", ondelete="SET NULL"), index=True),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

browsing_history = Table(
    "browsing_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    _user_fk(),
    Column("url", String(1024), nullable=False),
    Column("viewed_at", DateTime(timezone=True), nullable=False),
    Column("ip_address", String(64)),
)

follows = Table(
    "follows",
    metadata,
    Column("follower_id", Integer, ForeignKey("users.id"), primary_key=True),
    Column("followee_id", Integer, ForeignKey("users.id"), primary_key=True, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

orders = Table(
    "orders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    _user_fk(),
    Column("amount", Numeric(12, 2), nullable=False),
    Column("buyer_name", String(128)),
    Column("buyer_phone", String(64)),
    Column("shipping_address", String(512)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
