"""Crypt4GH handling (GA4GH file encryption standard, version 1).

A Crypt4GH file is a header followed by the encrypted body::

    header  = "crypt4gh" | version (u32 LE, = 1) | packet count (u32 LE) | packets
    packet  = length (u32 LE, itself included) | method (u32 LE, 0 = X25519+ChaCha20-Poly1305)
              | writer's public key (32) | nonce (12) | encrypted payload + MAC (16)
    payload = type (u32 LE): 0 = data encryption parameters: method (u32, 0) | session key (32)
                             1 = data edit list
    body    = segments of nonce (12) | ChaCha20-Poly1305 of up to 64 KiB | MAC (16)

Ingest only splits the header off (``read_header``, no key needed, sizes bounded);
verify decrypts it with the archive's private keys (``session_keys``) and decrypts
the body segment by segment (``BodyDecryptor``).
"""

import hashlib
import logging
import os
import struct

import crypt4gh.keys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .config import ConfigError
from .errors import CORRUPT, EDIT_LIST, NOT_CRYPT4GH, WRONG_KEY, UserError

LOG = logging.getLogger(__name__)

MAGIC = b"crypt4gh"
VERSION = 1
PREAMBLE = struct.Struct("<8sII")  # magic, version, packet count
SEGMENT_SIZE = 65536
NONCE_SIZE = 12
MAC_SIZE = 16
CIPHER_SEGMENT_SIZE = NONCE_SIZE + SEGMENT_SIZE + MAC_SIZE
X25519_CHACHA20 = 0
PACKET_DATA_ENC = 0
PACKET_EDIT_LIST = 1
# smallest packet: length, method, public key, nonce, MAC around a 0-byte payload
MIN_PACKET_SIZE = 4 + 4 + 32 + NONCE_SIZE + MAC_SIZE


def _read_exactly(stream, size):
    data = bytearray()
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def read_header(stream, max_size, max_packets):
    """Read the header off the start of ``stream``, leaving it at the body.

    No key is used: this only checks the framing and returns the header bytes. A
    stream that is not Crypt4GH, or whose header is malformed or beyond the bounds,
    is the submitter's error.
    """
    preamble = _read_exactly(stream, PREAMBLE.size)
    if len(preamble) < PREAMBLE.size or not preamble.startswith(MAGIC):
        raise UserError(NOT_CRYPT4GH, "The file is not a Crypt4GH file (it does not start with "
                                      "the Crypt4GH magic bytes); encrypt it with crypt4gh for "
                                      "this archive's public key.")
    _, version, count = PREAMBLE.unpack(preamble)
    if version != VERSION:
        raise UserError(NOT_CRYPT4GH, f"The file is Crypt4GH version {version}; only version "
                                      f"{VERSION} is supported.")
    if count == 0:
        raise UserError(CORRUPT, "The Crypt4GH header has no packets, so no key can open it.")
    if count > max_packets:
        raise UserError(CORRUPT, f"The Crypt4GH header has {count} packets, more than the "
                                 f"{max_packets} this archive accepts.")
    header = bytearray(preamble)
    for i in range(count):
        raw_length = _read_exactly(stream, 4)
        if len(raw_length) < 4:
            raise UserError(CORRUPT, "The Crypt4GH header is truncated.")
        (length,) = struct.unpack("<I", raw_length)
        if length < MIN_PACKET_SIZE:
            raise UserError(CORRUPT, f"Header packet {i + 1} has an impossible length ({length}).")
        if len(header) + length > max_size:
            raise UserError(CORRUPT, f"The Crypt4GH header is larger than the {max_size} bytes "
                                     "this archive accepts.")
        packet = _read_exactly(stream, length - 4)
        if len(packet) < length - 4:
            raise UserError(CORRUPT, "The Crypt4GH header is truncated.")
        header += raw_length + packet
    return bytes(header)


def header_packets(header):
    """The packets (length prefix removed) of a header that ``read_header`` accepted."""
    _, _, count = PREAMBLE.unpack_from(header)
    offset = PREAMBLE.size
    for _ in range(count):
        (length,) = struct.unpack_from("<I", header, offset)
        yield header[offset + 4:offset + length]
        offset += length


def _shared_key(private_key, writer_public):
    """The key the writer derived for us (libsodium crypto_kx: we are the client)."""
    ours = private_key.public_key().public_bytes_raw()
    dh = private_key.exchange(X25519PublicKey.from_public_bytes(writer_public))
    return hashlib.blake2b(dh + ours + writer_public, digest_size=64).digest()[:32]


def _open_packet(packet, private_keys):
    """(the plaintext of a header packet, the key that opened it), or (None, None) if
    none of our keys opens it."""
    (method,) = struct.unpack_from("<I", packet)
    if method != X25519_CHACHA20 or len(packet) < MIN_PACKET_SIZE - 4:
        return None, None
    writer_public, nonce, sealed = packet[4:36], packet[36:48], packet[48:]
    for key in private_keys:
        try:
            return (ChaCha20Poly1305(_shared_key(key, writer_public)).decrypt(nonce, sealed,
                                                                              None), key)
        except (InvalidTag, ValueError):
            continue
    return None, None


def session_keys(header, private_keys, retired_keys=(), with_key=False):
    """Decrypt the header with any of our private keys; the body's session keys (and,
    ``with_key``, the first of our keys that opened a packet).

    Files with an edit list are refused: the archive keeps whole files only; so are
    files that only a retired key opens.
    """
    keys, opener = [], None
    for packet in header_packets(header):
        plain, key = _open_packet(packet, private_keys)
        if plain is None:
            continue  # for another recipient
        opener = opener or key
        if len(plain) < 4:
            raise UserError(CORRUPT, "A Crypt4GH header packet is empty.")
        (kind,) = struct.unpack_from("<I", plain)
        if kind == PACKET_EDIT_LIST:
            raise UserError(EDIT_LIST, "The file has a Crypt4GH edit list; the archive accepts "
                                       "whole files only: encrypt it again without a range.")
        if kind != PACKET_DATA_ENC or len(plain) != 40:
            raise UserError(CORRUPT, f"A Crypt4GH header packet has an unknown type ({kind}).")
        (method,) = struct.unpack_from("<I", plain, 4)
        if method != 0:
            raise UserError(CORRUPT, f"The data encryption method {method} is not supported.")
        keys.append(plain[8:40])
    if not keys and retired_keys and opening_key(header, retired_keys) is not None:
        raise UserError(WRONG_KEY, "The file is encrypted for a key this archive has retired; "
                                   "encrypt it for the archive's current public key.")
    if not keys:
        raise UserError(WRONG_KEY, "The file is not encrypted for this archive: none of its "
                                   "header packets opens with the archive's key; encrypt it "
                                   "for the archive's public key.")
    return (keys, opener) if with_key else keys


def rotate_header(header, private_keys, target_public):
    """The header re-encrypted for another archive key (SPEC 11): the same session keys,
    in packets that only ``target_public`` opens (those for other keys, ours included,
    are left out), written by a key pair made for it. The body is not touched: it stays
    encrypted with those session keys. Refused (as verify refuses them) for a header
    with an edit list or that none of ``private_keys`` opens."""
    import io

    import crypt4gh.header

    session_keys(header, private_keys)  # refuses edit lists, and headers not ours
    raw = [(0, key.private_bytes_raw(), None) for key in private_keys]
    writer = X25519PrivateKey.generate()
    packets = crypt4gh.header.reencrypt(
        crypt4gh.header.parse(io.BytesIO(header)), raw,
        [(0, writer.private_bytes_raw(), target_public.public_bytes_raw())], trim=True)
    return crypt4gh.header.serialize(packets)


def opening_key(header, private_keys):
    """The index of the first of our private keys that opens a packet of the header,
    or None."""
    for index, key in enumerate(private_keys):
        if any(_open_packet(packet, [key])[0] is not None
               for packet in header_packets(header)):
            return index
    return None


def _pkcs8_key(index, path, passphrase):
    """An X25519 private key in a PKCS#8 PEM file (``BEGIN PRIVATE KEY``, not locked)."""
    from cryptography.hazmat.primitives import serialization

    with open(path, "rb") as f:
        try:
            key = serialization.load_pem_private_key(f.read(), password=None)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"keys[{index}]: {path} is a PKCS#8 PEM file that cannot be "
                              f"read ({e})") from None
    if not isinstance(key, X25519PrivateKey):
        raise ConfigError(f"keys[{index}]: {path} holds a {key.__class__.__name__}, not an "
                          "X25519 key as Crypt4GH needs")
    if passphrase:
        LOG.warning("keys[%d]: %s is a PKCS#8 key that is not locked: its passphrase is not "
                    "used", index, path)
    return key


def load_private_keys(key_settings):
    """The archive's private keys from the ``keys`` settings (path and passphrase or
    passphrase_file each); a key that cannot be read stops the worker at start."""
    keys = []
    for i, setting in enumerate(key_settings):
        path = setting["path"]
        try:
            found = os.stat(path)
        except OSError as e:
            raise ConfigError(f"keys[{i}].path: cannot read {path}: {e.strerror}") from None
        mode = found.st_mode
        # others never; the group only if it is verify's own (as Kubernetes mounts a
        # secret: owned by root, group the pod's fsGroup, mode 0440)
        if mode & 0o007 or mode & 0o070 and found.st_gid != os.getgid():
            raise ConfigError(f"keys[{i}].path: {path} can be read by other users (mode "
                              f"{mode & 0o777:o}, group {found.st_gid}); make it readable by "
                              f"verify's user (or its own group) only: chmod 600 {path}")
        passphrase = setting.get("passphrase")
        if passphrase is None and setting.get("passphrase_file"):
            try:
                with open(setting["passphrase_file"], encoding="utf-8") as f:
                    passphrase = f.read().rstrip("\r\n")
            except OSError as e:
                raise ConfigError(f"keys[{i}].passphrase_file: cannot read "
                                  f"{setting['passphrase_file']}: {e.strerror}") from None
        try:
            with open(path, "rb") as f:
                pkcs8 = f.read(64).lstrip().startswith(b"-----BEGIN PRIVATE KEY-----") or None
            if pkcs8:  # as the Java implementation writes them (the crypt4gh tool cannot)
                keys.append(_pkcs8_key(i, path, passphrase))
                continue
            raw = crypt4gh.keys.get_private_key(path, lambda p=passphrase: str(p or ""))
        except OSError as e:
            raise ConfigError(f"keys[{i}].path: cannot read {path}: {e.strerror}") from None
        except ConfigError:
            raise
        except (SystemExit, Exception):  # crypt4gh exits on a wrong passphrase
            raise ConfigError(f"keys[{i}]: {path} is not a Crypt4GH private key, or the "
                              "passphrase is wrong") from None
        keys.append(X25519PrivateKey.from_private_bytes(bytes(raw)))
    if not keys:
        raise ConfigError("keys: verify needs at least one private key")
    return keys


class BodyDecryptor:
    """Feed the encrypted body in any chunking; get the plaintext back in order.

    Each complete segment is authenticated and decrypted straight into the output
    buffer; ``finish`` handles the last, shorter one. A segment that no session key
    opens is the submitter's error.
    """

    def __init__(self, keys):
        self.ciphers = [ChaCha20Poly1305(bytes(k)) for k in keys]
        self.pending = b""
        self.segments = 0

    def _fail(self, last=False):
        if last:  # a cut file ends in a cut segment, which does not authenticate either
            raise UserError(CORRUPT, f"Segment {self.segments + 1} of the file, its last, does "
                                     "not decrypt (it does not authenticate): the file was "
                                     "truncated or altered after encryption; upload it again.")
        raise UserError(CORRUPT, f"Segment {self.segments + 1} of the file does not decrypt (it "
                                 "does not authenticate): the file was altered or truncated "
                                 "after encryption; upload it again.")

    def update(self, chunk):
        """The plaintext of the segments ``chunk`` completes (a new buffer)."""
        data = self.pending + chunk if self.pending else bytes(chunk)
        count = len(data) // CIPHER_SEGMENT_SIZE
        plain = bytearray(count * SEGMENT_SIZE)
        sealed, out = memoryview(data), memoryview(plain)
        for i in range(count):
            segment = sealed[i * CIPHER_SEGMENT_SIZE:(i + 1) * CIPHER_SEGMENT_SIZE]
            target = out[i * SEGMENT_SIZE:(i + 1) * SEGMENT_SIZE]
            for cipher in self.ciphers:
                try:
                    cipher.decrypt_into(segment[:NONCE_SIZE], segment[NONCE_SIZE:], None, target)
                    break
                except InvalidTag:
                    continue
            else:
                self._fail()
            self.segments += 1
        self.pending = bytes(sealed[count * CIPHER_SEGMENT_SIZE:])
        return plain

    def finish(self):
        """The plaintext of the last, shorter segment (empty if there is none). A last
        segment of a nonce and a MAC alone that authenticates is an empty one: the Go
        implementation writes an empty file so."""
        segment, self.pending = self.pending, b""
        if not segment:
            return b""
        if len(segment) < NONCE_SIZE + MAC_SIZE:
            raise UserError(CORRUPT, f"The file is truncated: its last segment has "
                                     f"{len(segment)} bytes, fewer than a nonce and a MAC "
                                     f"({NONCE_SIZE + MAC_SIZE}); upload it again.")
        for cipher in self.ciphers:
            try:
                plain = cipher.decrypt(segment[:NONCE_SIZE], segment[NONCE_SIZE:], None)
                self.segments += 1
                return plain
            except InvalidTag:
                continue
        self._fail(last=True)
