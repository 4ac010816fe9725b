"""The analyst's login: a LOGIN role that is only a member of `dm_analyst`, so no statement of the session
(`SET ROLE NONE`, `RESET ROLE`, `SET SESSION AUTHORIZATION`) reaches `dm_private`: the session never held
more than the analyst's rights. Production names its own (`DM_ANALYST_URL`); on a server where we may
create roles (the embedded one, a dev box), `dm_analyst_login` is created with a random password kept in
the project's home (mode 0600)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from sqlalchemy import URL, create_engine, make_url, text

from dm_pipeline.errors import ConfigError

LOGIN_ROLE = "dm_analyst_login"
ANALYST_URL_ENV = "DM_ANALYST_URL"


def _password(home: Path) -> str:
    path = home / "analyst-password"
    if path.exists():
        return path.read_text().strip()
    home.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    return secret


def analyst_url(app: URL, home: Path) -> URL:
    """The URL (with its password) of a login that is nothing but an analyst."""
    configured = os.environ.get(ANALYST_URL_ENV)
    if configured:
        return make_url(configured)
    admin = create_engine(app.set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            may = conn.scalar(text("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user"))
            if not may:
                raise ConfigError(f"{ANALYST_URL_ENV} is not set and {app.username!r} may not create roles. Fix: "
                                  f"create a LOGIN role that is only a member of dm_analyst (GRANT dm_analyst TO "
                                  f"it) and export {ANALYST_URL_ENV}=postgresql://that_role@host/db")
            password = _password(home)
            exists = conn.scalar(text("SELECT true FROM pg_roles WHERE rolname = :r"), {"r": LOGIN_ROLE})
            verb = "ALTER" if exists else "CREATE"
            # The password is a bind-free literal: roles take no parameters; it is URL-safe base64.
            conn.execute(text(f"{verb} ROLE {LOGIN_ROLE} LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE "
                              f"NOREPLICATION NOBYPASSRLS PASSWORD '{password}'"))
            conn.execute(text(f"GRANT dm_analyst TO {LOGIN_ROLE}"))
            # Nothing else: a membership granted by hand later would widen the boundary.
            for (other,) in conn.execute(text(
                    "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                    "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = :r AND r.rolname <> 'dm_analyst'"),
                    {"r": LOGIN_ROLE}):
                conn.execute(text(f'REVOKE "{other}" FROM {LOGIN_ROLE}'))
    finally:
        admin.dispose()
    return app.set(username=LOGIN_ROLE, password=password)


def psql_environment(password: str | None) -> dict[str, str]:
    """What psql may see: the terminal's basics and the password; never tokens or the token key."""
    keep = ("PATH", "HOME", "TERM", "LANG", "LC_ALL", "LC_CTYPE", "PAGER", "PSQL_PAGER", "COLUMNS", "LINES")
    env = {k: v for k, v in os.environ.items() if k in keep}
    if password:
        env["PGPASSWORD"] = password
    return env
