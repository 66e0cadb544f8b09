"""C2SP signed notes (c2sp.org/signed-note) with Ed25519, and tlog-checkpoint bodies
(c2sp.org/tlog-checkpoint).

A note is a text ending in a newline, a blank line, then signature lines
``— <key name> base64(key ID || signature)``. The key ID is
``SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]`` (0x01: Ed25519). Keys are written
in the Go `sumdb/note` forms: verifier ``<name>+<hex key ID>+base64(0x01 || public key)`` and
signer ``PRIVATE+KEY+<name>+<hex key ID>+base64(0x01 || seed)``.

A checkpoint body is ``<origin>\\n<tree size>\\n<base64 root hash>\\n`` (extension lines after it
are allowed and ignored here).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ALG_ED25519 = 0x01
DASH = "\u2014"
MAX_SIGNATURES = 16
_NAME = re.compile(r"[^\s+]+")
_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")


class NoteError(ValueError):
    """A note or key that does not parse or verify. `kind` says how it failed."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public).digest()[:4]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError("malformed", f"not base64: {text[:40]!r}") from None


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise NoteError("malformed", f"bad key name {name[:80]!r}: non-empty, no spaces or '+'")
    return name


@dataclass(frozen=True)
class Verifier:
    name: str
    key_id: bytes
    public: Ed25519PublicKey

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        parts = vkey.strip().split("+", 2)  # base64 may hold "+"
        if len(parts) != 3:
            raise NoteError("malformed", "a verifier key is NAME+KEYID+BASE64 (three '+' parts)")
        name, hexid, data = _check_name(parts[0]), parts[1], _unb64(parts[2])
        if not re.fullmatch(r"[0-9a-f]{8}", hexid):
            raise NoteError("malformed", f"key ID must be 8 lowercase hex digits, got {hexid!r}")
        if len(data) != 33 or data[0] != ALG_ED25519:
            raise NoteError("malformed", "only Ed25519 keys (type 0x01, 32 bytes) are supported")
        if key_id(name, data[1:]) != bytes.fromhex(hexid):
            raise NoteError("malformed", "key ID does not match the key name and public key")
        return cls(name, bytes.fromhex(hexid), Ed25519PublicKey.from_public_bytes(data[1:]))

    def __str__(self) -> str:
        raw = self.public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return f"{self.name}+{self.key_id.hex()}+{_b64(bytes([ALG_ED25519]) + raw)}"


@dataclass(frozen=True)
class Signer:
    name: str
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls, name: str) -> Signer:
        return cls(_check_name(name), Ed25519PrivateKey.generate())

    @classmethod
    def parse(cls, skey: str) -> Signer:
        parts = skey.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("malformed", "a signer key is PRIVATE+KEY+NAME+KEYID+BASE64")
        data = _unb64(parts[4])
        if len(data) != 33 or data[0] != ALG_ED25519:
            raise NoteError("malformed", "only Ed25519 keys (type 0x01, 32-byte seed)")
        s = cls(_check_name(parts[2]), Ed25519PrivateKey.from_private_bytes(data[1:]))
        if s.verifier.key_id.hex() != parts[3]:
            raise NoteError("malformed", "key ID does not match the key")
        return s

    @property
    def public(self) -> bytes:
        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.name, key_id(self.name, self.public), self.private.public_key())

    def __str__(self) -> str:
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        seed = self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return (f"PRIVATE+KEY+{self.name}+{key_id(self.name, self.public).hex()}+"
                f"{_b64(bytes([ALG_ED25519]) + seed)}")  # fmt: skip

    def sign(self, text: str) -> str:
        """The signed note: text, a blank line, one signature line."""
        _check_text(text)
        sig = key_id(self.name, self.public) + self.private.sign(text.encode())
        return f"{text}\n{DASH} {self.name} {_b64(sig)}\n"


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("malformed", "note text must end with a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise NoteError("malformed", "note text holds control characters")


def split_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    """(text, [(key name, key ID + signature)]); no verification."""
    if not note.endswith("\n"):
        raise NoteError("malformed", "a signed note ends with a newline")
    cut = note.rfind("\n\n")
    if cut < 0:
        raise NoteError("unsigned", "no signature block (signatures stripped?)")
    text, block = note[: cut + 1], note[cut + 2 :]
    _check_text(text)
    sigs = []
    for line in block.splitlines():
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != DASH:
            raise NoteError("malformed", f"bad signature line {line[:80]!r}")
        sig = _unb64(parts[2])
        if len(sig) < 5:
            raise NoteError("malformed", "signature too short")
        sigs.append((_check_name(parts[1]), sig))
    if not sigs:
        raise NoteError("unsigned", "no signature lines (signatures stripped?)")
    if len(sigs) > MAX_SIGNATURES:
        raise NoteError("malformed", f"more than {MAX_SIGNATURES} signatures")
    return text, sigs


def open_note(note: str, verifier: Verifier) -> str:
    """The note's text when the verifier's key signed it; else NoteError (kind: malformed,
    unsigned, foreign-key, bad-signature). Signatures of other keys are ignored."""
    text, sigs = split_note(note)
    mine = [s for n, s in sigs if n == verifier.name and s[:4] == verifier.key_id]
    if not mine:
        others = ", ".join(f"{n}+{s[:4].hex()}" for n, s in sigs)
        raise NoteError("foreign-key", f"not signed by the trusted key {verifier.name}+"
                        f"{verifier.key_id.hex()} (signed by {others})")  # fmt: skip
    raw = verifier.public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    for sig in mine:
        if not _ed25519_ok(raw, sig[4:], text.encode()):
            raise NoteError("bad-signature", "a trusted signature does not verify")
    return text


@functools.lru_cache(maxsize=4096)
def _ed25519_ok(public: bytes, sig: bytes, msg: bytes) -> bool:
    """Cached: a verifier meets the same checkpoint in the log, the file and receipts."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(sig, msg)
        return True
    except InvalidSignature:
        return False


# -- checkpoints -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{_b64(self.root)}\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or not lines[0] or not _SIZE.fullmatch(lines[1]):
            raise NoteError("malformed", "a checkpoint is ORIGIN, SIZE, BASE64 ROOT lines")
        root = _unb64(lines[2])
        if len(root) != 32:
            raise NoteError("malformed", "checkpoint root hash must be 32 bytes")
        return cls(lines[0], int(lines[1]), root)


def open_checkpoint(note: str, verifier: Verifier) -> Checkpoint:
    return Checkpoint.parse(open_note(note, verifier))


# -- key files ---------------------------------------------------------------------------------

KEY_FILE = "key"
VERIFIER_FILE = "key.pub"


def load_or_create_signer(directory: Path, name: str) -> Signer:
    """The log's signing key: generated on first start into a 0600 file; its verifier key is
    written next to it (readable by anyone who should check checkpoints)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / KEY_FILE
    if not path.exists():
        signer = Signer.generate(name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(str(signer) + "\n")
            f.flush()
            os.fsync(f.fileno())
        pub = directory / VERIFIER_FILE
        pub.write_text(str(signer.verifier) + "\n")
        os.chmod(pub, 0o644)
        return signer
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(f"{path} is mode {mode:04o}: the audit signing key must be private "
                              f"(chmod 600 {path})")  # fmt: skip
    return Signer.parse(path.read_text())
