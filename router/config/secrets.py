"""Secret files (node keys, the API token) and the published sample secrets.

A secret file must be readable by its owner alone, as ssh insists for a private key: a file
that group or others can read is refused, naming the file and the fix. The sample node keys
shipped in ``zones/`` are public by design (the lab and the tests use them); the router
recognises them by fingerprint, wherever they are copied, and serves telemetry with them only
on loopback. A placeholder API token is treated the same way.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from router.config.problems import Problem

# SHA-256 (first 128 bits) of each key in zones/node-keys.sample.yaml; a test keeps this
# list equal to that file.
SAMPLE_KEY_FINGERPRINTS = frozenset(
    {
        "455f6e9d1adc23f763139a3090e0ea86",  # tef-mad-1
        "a4b29b776e816dd7ad90dab3a9921f70",  # tef-mad-2
        "153de10a6c306d4d7f1fef2298d1ec80",  # tef-bcn-1
        "d93660fba803e1bf1b288516d82d1de0",  # tef-svq-1
        "5da9b726123a927e5ce5fe22fb648f5f",  # vdf-es-mad-1
        "883f478bc14b6bfbd00ba7d223cc27ab",  # vdf-es-bcn-1
        "51605595b6616b8906c26a0496a3e3bc",  # vdf-es-vlc-1
        "5b2685ef8944f57e885a999444565cad",  # ora-es-mad-1
        "4a71b861b37f2aa971249e76a27b1112",  # ora-es-bcn-1
        "8b225b54471d3e6b9c6af6c9ba7a024f",  # ora-es-bio-1
        "1ea2f039907b8b1ac5a26c2693e32adb",  # meo-lis-1
        "91892874f9374f355ffb11760db53edf",  # meo-opo-1
        "9e7e6f8fd576699f230a7392d05aaff3",  # nos-lis-1
        "4d6d5b11bb04f47ffdba4b1f628cdae3",  # nos-opo-1
        "f4bf78fe9cab621bd284cae01bf1c198",  # vdf-pt-lis-1
        "fe99f7cf4e2fac99fa1cd61a4e29f016",  # ix-mad-1
        "1d0524b134a13faab265a2961b610264",  # ix-lis-1
        "a1487c3775d954c715a9d0f9b8af3cd4",  # pop-par-1
    }
)

# Tokens that documentation, examples and old compose files use; never a real secret.
PLACEHOLDER_TOKENS = frozenset(
    {"replace-me-with-a-secret", "replace-me", "changeme", "change-me", "secret", "token",
     "password", "test", "example", "admin"}
)  # fmt: skip
MIN_TOKEN_CHARS = 24  # below this a token is guessable enough to call it a placeholder


class SecretFileError(Exception):
    """A secret file that cannot be used; the message names the file and the fix."""


def key_fingerprint(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:32]


def is_sample_key(key: bytes) -> bool:
    return key_fingerprint(key) in SAMPLE_KEY_FINGERPRINTS


def is_placeholder_token(token: str) -> bool:
    return token.lower() in PLACEHOLDER_TOKENS or len(token) < MIN_TOKEN_CHARS


def loose_permissions(path: Path) -> str | None:
    """Why ``path`` is readable or writable by more than its owner, or None."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        return (
            f"{path} is accessible by group or others (mode {mode:04o}); "
            f"a secret must be readable by its owner only: chmod 600 {path}"
        )
    return None


def read_secret_file(path: Path, what: str) -> str:
    """The text of a secret file (stripped), refusing loose permissions and empty files."""
    try:
        problem = loose_permissions(path)
        if problem:
            raise SecretFileError(f"{what}: {problem}")
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecretFileError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SecretFileError(f"{what}: {path} is not UTF-8 text") from None
    if not text:
        raise SecretFileError(f"{what}: {path} is empty")
    return text


def write_secret_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte (never briefly readable)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by the umask; fchmod is not
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


COOKIE_SECRET_OCTETS = 16  # a SipHash-2-4 key (RFC 9018)


def load_cookie_secrets(path: Path, display: str) -> tuple[tuple[bytes, ...], list[Problem]]:
    """The DNS cookie secrets file: one or two lines of 32 hex digits (``#`` starts a comment).
    The first is the secret new cookies are made with; a second, the previous one, is still
    accepted while clients move over (rotation: write the new secret as the first line and
    the old as the second, then drop the second after an hour, the cookies' lifetime).
    Readable by its owner only."""
    problems: list[Problem] = []
    try:
        loose = loose_permissions(path)
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return (), [Problem(display, 0, f"cannot read: {exc.strerror or exc}")]
    except UnicodeDecodeError:
        return (), [Problem(display, 0, "not UTF-8 text")]
    if loose:
        problems.append(Problem(display, 0, loose))
    secrets: list[bytes] = []
    for number, line in enumerate(text.splitlines(), start=1):
        value = line.split("#", 1)[0].strip()
        if not value:
            continue
        try:
            secret = bytes.fromhex(value)
        except ValueError:
            secret = b""
        if len(secret) != COOKIE_SECRET_OCTETS:
            problems.append(
                Problem(display, number, "a cookie secret is 32 hex digits (16 octets)")
            )
        elif secret == bytes(COOKIE_SECRET_OCTETS):
            problems.append(Problem(display, number, "an all-zero cookie secret is no secret"))
        elif secret in secrets:
            problems.append(Problem(display, number, "the same secret twice"))
        else:
            secrets.append(secret)
    if len(secrets) > 2 and not problems:
        problems.append(
            Problem(display, 0, "at most two secrets: the current one, then the previous one")
        )
    if not secrets and not problems:
        problems.append(Problem(display, 0, "no cookie secret in the file (32 hex digits)"))
    return (tuple(secrets) if not problems else ()), problems
