"""Pickles rltool unpickles only when this user's rltool wrote them: signed with a key in $RLTOOL_HOME.

The PPO loop checkpoints each text environment mid-episode (its position, hand, RNG), and a user
environment is any Python object: only a pickle captures it. Unpickling runs code, so each pickle
is stored as plain bytes next to an HMAC-SHA256 of them under a key that never leaves this machine
(`$RLTOOL_HOME/checkpoint.key`, created on first use, mode 0600). A checkpoint from anyone else (or
edited since) fails the check and is refused before anything is unpickled. To resume a run on
another machine, copy the key file along with it.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import secrets
from pathlib import Path

KEY_FILE = "checkpoint.key"


def key_path() -> Path:
    return Path(os.environ.get("RLTOOL_HOME", Path.home() / ".cache" / "rltool")) / KEY_FILE


def _key() -> bytes:
    path = key_path()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:  # another process made it first: read that one
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
                f.flush()
                os.fsync(f.fileno())
    key = path.read_bytes()
    if len(key) != 32:
        raise ValueError(f"{path}: not a 32-byte key; delete it to make a new one (its checkpoints then "
                         "no longer resume)")
    return key


def sign(blob: bytes) -> str:
    return hmac.new(_key(), blob, hashlib.sha256).hexdigest()


def dump(obj) -> tuple[bytes, str]:
    """(pickle of obj, its signature): both plain data for a weights_only checkpoint."""
    blob = pickle.dumps(obj)
    return blob, sign(blob)


def check(blob: bytes, signature: str, what: str) -> None:
    """Raises ValueError naming `what` unless this user's key signed `blob` (nothing is unpickled)."""
    if not (isinstance(blob, bytes) and isinstance(signature, str) and hmac.compare_digest(sign(blob), signature)):
        raise ValueError(f"{what}: not signed by this machine's rltool ({key_path()}); refused: unpickling it "
                         "could run code. Resume on the machine that wrote it, or copy its key file here")


def load(blob: bytes, signature: str, what: str):
    check(blob, signature, what)
    return pickle.loads(blob)
