"""The stored OAuth pairs as an operator sees them: `dm-pipeline oauth status | reset | rotate-key`.

Nothing here returns or prints a token: status reports which key decrypts a pair, never what it decrypts
to. Every write takes the account's refresh lock (the advisory lock `XOAuth.refresh` holds while it spends
a refresh token), so a reset or a rotation never interleaves with a refresh in another process.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Connection, Engine, delete, select, text, update

from dm_pipeline.db.tables import oauth_tokens
from dm_pipeline.errors import ConfigError
from dm_pipeline.oauth import KEY_ENV, OLD_KEYS_ENV


@dataclass(frozen=True)
class PairStatus:
    account_key: str
    has_refresh: bool
    scope: str | None
    expires_at: datetime | None
    last_refreshed_at: datetime | None
    authorized_at: datetime | None
    refresh_rejected_at: datetime | None
    updated_at: datetime
    key: str                 # "current", "old key N", "no key decrypts it", or "" (no key given)


def _lock(conn: Connection, account_key: str) -> None:
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                 {"k": f"dm_pipeline:oauth:{account_key}"})


def which_key(ciphertexts: Iterable[bytes | None], primary: Fernet | None, olds: list[Fernet]) -> str:
    if primary is None:
        return ""
    for label, fernet in (("current", primary), *((f"old key {n}", k) for n, k in enumerate(olds, start=1))):
        try:
            for enc in ciphertexts:
                if enc is not None:
                    fernet.decrypt(enc)
        except InvalidToken:
            continue
        return label
    return "no key decrypts it"


def pair_status(engine: Engine, primary: Fernet | None = None, olds: list[Fernet] | None = None) -> list[PairStatus]:
    """Every stored pair, by account key."""
    c = oauth_tokens.c
    with engine.connect() as conn:
        rows = conn.execute(select(oauth_tokens).order_by(c.account_key)).all()
    return [PairStatus(r.account_key, r.refresh_token_enc is not None, r.scope, r.expires_at, r.last_refreshed_at,
                       r.authorized_at, r.refresh_rejected_at, r.updated_at,
                       which_key((bytes(r.access_token_enc), bytes(r.refresh_token_enc) if r.refresh_token_enc
                                  else None), primary, olds or []))
            for r in rows]


def forget(engine: Engine, account_keys: Iterable[str]) -> list[str]:
    """Delete the stored pairs of `account_keys` (one transaction); the keys that had one."""
    gone: list[str] = []
    with engine.begin() as conn:
        for key in sorted(set(account_keys)):
            _lock(conn, key)
            if conn.execute(delete(oauth_tokens).where(oauth_tokens.c.account_key == key)).rowcount:
                gone.append(key)
    return gone


@dataclass(frozen=True)
class Rotation:
    rotated: list[str]        # were under an old key, now under the current one
    renewed: list[str]        # were under the current key already: re-encrypted all the same


def rotate(engine: Engine, primary: Fernet, olds: list[Fernet]) -> Rotation:
    """Re-encrypt every stored pair with `primary`, in one transaction. A pair no key decrypts aborts it all
    (nothing changed), as a ConfigError naming the accounts."""
    keys = MultiFernet([primary, *olds])
    c = oauth_tokens.c
    rotated: list[str] = []
    renewed: list[str] = []
    with engine.begin() as conn:
        # Locks in key order first, rows after: a refresh holds one account's lock, then writes its row.
        for key in conn.scalars(select(c.account_key).order_by(c.account_key)).all():
            _lock(conn, key)
        rows = conn.execute(select(c.account_key, c.access_token_enc, c.refresh_token_enc)
                            .order_by(c.account_key).with_for_update()).all()
        updates: list[tuple[str, bytes, bytes | None]] = []
        unreadable: list[str] = []
        for key, access_enc, refresh_enc in rows:
            pair = (bytes(access_enc), bytes(refresh_enc) if refresh_enc is not None else None)
            try:
                new = (keys.rotate(pair[0]), keys.rotate(pair[1]) if pair[1] is not None else None)
            except InvalidToken:
                unreadable.append(key)
                continue
            (renewed if which_key(pair, primary, []) == "current" else rotated).append(key)
            updates.append((key, *new))
        if unreadable:
            raise ConfigError(
                f"no key decrypts the stored pair{'s' if len(unreadable) > 1 else ''} of "
                f"{', '.join(repr(k) for k in unreadable)}, neither {KEY_ENV} nor one in {OLD_KEYS_ENV}: nothing was "
                f"re-encrypted. Fix: add the key they were written with to {OLD_KEYS_ENV}; or forget them "
                f"(dm-pipeline oauth reset {' '.join(f'--account {k}' for k in unreadable)} --yes) and connect "
                "those accounts again")
        for key, access_enc, refresh_enc in updates:
            conn.execute(update(oauth_tokens).where(c.account_key == key)
                         .values(access_token_enc=access_enc, refresh_token_enc=refresh_enc))
    return Rotation(rotated, renewed)
