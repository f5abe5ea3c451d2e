"""Which MLflow tracking URIs we accept, decided before MLflow sees one.

MLflow itself treats an unknown string as a local path: `127.0.0.1:5055` (a server address without its scheme)
becomes a folder of that name, and the runs land there with a success message. So the URI is checked here first,
and nothing is created anywhere until it passes. A pure rule: it reads the file system, never writes it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from neptune_migration.errors import UsageError

ACCEPTED = ("http(s)://HOST[:PORT]", "sqlite:///PATH", "postgresql://...", "mysql://...",
            "file:///PATH or an existing folder", "databricks")
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_DRIVER_SEPARATOR = "+"  # postgresql+psycopg2://, mysql+pymysql://: SQLAlchemy's dialect+driver form


def database_of(uri: str) -> str:
    """The dialect a database URI names, without its driver: `postgresql+psycopg2://...` -> `postgresql`."""
    return uri.split("://", 1)[0].split(_DRIVER_SEPARATOR, 1)[0].lower()


def _refuse(uri: str, why: str) -> UsageError:
    return UsageError(f"--mlflow-tracking-uri {uri!r}: {why}; accepted: {', '.join(ACCEPTED)}")


def check_tracking_uri(uri: str) -> str:
    """`uri` when it is a form MLflow stores runs at as the user meant; a UsageError listing the accepted forms
    otherwise (no scheme, an unknown scheme, or a local path that does not exist)."""
    text = uri.strip()
    if not text:
        raise _refuse(uri, "empty")
    if text == "databricks" or text.startswith("databricks://"):
        return text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if "://" not in text:
        # "host:port" parses with the host as its scheme; a bare word or path has none. Only an existing folder
        # is taken as a local store: anything else is most likely a server address missing http://.
        if Path(text).expanduser().is_dir():
            return text
        raise _refuse(uri, "no scheme (a server needs http:// or https://), and it is not an existing folder")
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise _refuse(uri, "no host")
        return text
    if database_of(text) in DATABASE_SCHEMES:
        return text
    if scheme == "file":
        folder = Path(parts.path)
        if parts.netloc not in ("", "localhost") or not folder.is_dir():
            raise _refuse(uri, f"the folder {parts.path or '/'} does not exist")
        return text
    raise _refuse(uri, f"unknown scheme {parts.scheme + '://'!r}")


# Every PostgreSQL session of ours carries this application_name, so that the bulk path's check for other writers
# (bulk_postgres.py) can tell an MLflow server's sessions from ours, in-process loads included.
APPLICATION_NAME = "neptune-migrate"


def naming_our_sessions(uri: str) -> str:
    """`uri` as MLflow's client should open it: a `postgresql://` URI gains `application_name=neptune-migrate`
    (any other is returned as it is). The user's URI stays the one that names the store in keys and messages."""
    if database_of(uri) != "postgresql":
        return uri
    from sqlalchemy.engine import make_url

    try:
        url = make_url(uri)
    except Exception:
        return uri  # not for us to judge here: MLflow's own error says what is wrong with it
    return url.update_query_dict({"application_name": APPLICATION_NAME}).render_as_string(hide_password=False)
