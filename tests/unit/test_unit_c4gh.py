"""lega.c4gh against real Crypt4GH files made by the crypt4gh library.

Passphrase-protected keys go through scrypt (tens of milliseconds each), so keys are
made and loaded once per module.
"""

import io
import os
import struct

import crypt4gh.header
import crypt4gh.keys
import crypt4gh.keys.c4gh
import crypt4gh.lib
import pytest

from lega.c4gh import (BodyDecryptor, load_private_keys, read_header, rotate_header,
                       session_keys)
from lega.config import ConfigError
from lega.errors import CORRUPT, EDIT_LIST, NOT_CRYPT4GH, WRONG_KEY, UserError

SEGMENT = 65536
CIPHER_SEGMENT = 12 + SEGMENT + 16
BIG = 1024 * 1024


class KeyPair:
    def __init__(self, folder, name, passphrase):
        self.seckey = str(folder / f"{name}.sec")
        self.pubkey_path = str(folder / f"{name}.pub")
        self.passphrase = passphrase
        crypt4gh.keys.c4gh.generate(self.seckey, self.pubkey_path,
                                    passphrase.encode() if passphrase else None, b"lega tests")
        self.public = crypt4gh.keys.get_public_key(self.pubkey_path)
        self.private = crypt4gh.keys.get_private_key(self.seckey, lambda: passphrase or "")


@pytest.fixture(scope="module")
def akeys(tmp_path_factory):
    """Our archive's keys (current, with a passphrase; old, without) and another archive's."""
    folder = tmp_path_factory.mktemp("keys")
    current = KeyPair(folder, "current", "current passphrase")
    old = KeyPair(folder, "old", None)  # no passphrase: no scrypt
    other = KeyPair(folder, "other", None)  # someone else's archive
    pass_file = folder / "current.pass"
    pass_file.write_text(current.passphrase + "\n")
    return {
        "current": current, "old": old, "other": other, "folder": folder,
        "pass_file": str(pass_file),
        # loaded once: scrypt is slow on purpose
        "loaded_current": load_private_keys([{"path": current.seckey,
                                              "passphrase": current.passphrase}]),
        "loaded_old": load_private_keys([{"path": old.seckey}]),
        "loaded_other": load_private_keys([{"path": other.seckey}]),
    }


def encrypt(plaintext, *recipients):
    """A Crypt4GH file for the recipients, as (header, body)."""
    writer_sk = os.urandom(32)
    header, body = io.BytesIO(), io.BytesIO()
    crypt4gh.lib.encrypt([(0, writer_sk, r.public) for r in recipients],
                         io.BytesIO(plaintext), body, headerfile=header)
    return header.getvalue(), body.getvalue()


def make_header(packets_plain, recipient):
    writer_sk = os.urandom(32)
    packets = []
    for plain in packets_plain:
        packets.extend(crypt4gh.header.encrypt(plain, [(0, writer_sk, recipient.public)]))
    return crypt4gh.header.serialize(packets)


def preamble(count, version=1, magic=b"crypt4gh"):
    return magic + struct.pack("<II", version, count)


def expect_user_error(code, func, *args):
    with pytest.raises(UserError) as info:
        func(*args)
    assert info.value.code == code, f"{info.value.code}: {info.value.reason}"
    assert info.value.reason
    return info.value


# -- read_header ------------------------------------------------------------------------

def test_read_header_returns_exactly_the_header_and_leaves_the_body(akeys):
    header, body = encrypt(b"hello, archive" * 1000, akeys["current"])
    stream = io.BytesIO(header + body)
    assert read_header(stream, BIG, 1000) == header
    assert stream.read() == body


def test_read_header_with_several_recipients(akeys):
    header, body = encrypt(b"x" * 10, akeys["current"], akeys["old"], akeys["other"])
    stream = io.BytesIO(header + body)
    assert read_header(stream, BIG, 3) == header
    assert stream.read() == body


def test_read_header_of_an_empty_plaintext(akeys):
    header, body = encrypt(b"", akeys["current"])
    assert body == b""
    stream = io.BytesIO(header)
    assert read_header(stream, BIG, 10) == header
    assert stream.read() == b""


class Trickle(io.RawIOBase):
    """A stream that hands out at most 3 bytes per read, like a slow pipe."""

    def __init__(self, data):
        self.data = io.BytesIO(data)

    def readable(self):
        return True

    def read(self, size=-1):
        return self.data.read(min(3, size) if size >= 0 else 3)


def test_read_header_copes_with_short_reads(akeys):
    header, body = encrypt(b"y" * 5000, akeys["current"], akeys["other"])
    stream = Trickle(header + body)
    assert read_header(stream, BIG, 10) == header
    assert stream.data.read() == body


def test_header_size_bound_is_inclusive(akeys):
    header, body = encrypt(b"z", akeys["current"], akeys["other"])
    assert read_header(io.BytesIO(header + body), len(header), 10) == header
    expect_user_error(CORRUPT, read_header, io.BytesIO(header + body), len(header) - 1, 10)


def test_packet_count_bound_is_inclusive(akeys):
    header, body = encrypt(b"z", akeys["current"], akeys["other"])
    assert read_header(io.BytesIO(header + body), BIG, 2) == header
    expect_user_error(CORRUPT, read_header, io.BytesIO(header + body), BIG, 1)


@pytest.mark.parametrize("data", [
    b"",
    b"crypt4g",
    b"crypt4gh\x01\x00",
    b"CRYPT4GH" + struct.pack("<II", 1, 1) + b"\x00" * 100,
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 100,
    b"-----BEGIN CRYPT4GH PRIVATE KEY-----\n",
])
def test_not_crypt4gh(data):
    expect_user_error(NOT_CRYPT4GH, read_header, io.BytesIO(data), BIG, 10)


@pytest.mark.parametrize("version", [0, 2, 0x01000000])
def test_wrong_version(akeys, version):
    header, body = encrypt(b"v", akeys["current"])
    data = preamble(1, version=version) + header[16:] + body
    expect_user_error(NOT_CRYPT4GH, read_header, io.BytesIO(data), BIG, 10)


def test_zero_packets():
    expect_user_error(CORRUPT, read_header, io.BytesIO(preamble(0) + b"\x00" * 200), BIG, 10)


def test_more_packets_than_allowed():
    # refused from the count alone, before anything else is read
    expect_user_error(CORRUPT, read_header, io.BytesIO(preamble(11)), BIG, 10)
    expect_user_error(CORRUPT, read_header, io.BytesIO(preamble(0xFFFFFFFF)), BIG, 1000)


def test_header_larger_than_max_size():
    # a single packet announcing 100 MB: refused without reading (or allocating) it
    data = preamble(1) + struct.pack("<I", 100 * 1024 * 1024) + b"\x00" * 100
    expect_user_error(CORRUPT, read_header, io.BytesIO(data), BIG, 10)


@pytest.mark.parametrize("length", [0, 4, 10, 67])
def test_packet_length_smaller_than_possible(length):
    data = preamble(1) + struct.pack("<I", length) + b"\x00" * 200
    expect_user_error(CORRUPT, read_header, io.BytesIO(data), BIG, 10)


def test_smallest_possible_packet_is_framed():
    # framing only: 68 bytes (length, method, key, nonce, MAC) is a possible packet
    packet = struct.pack("<I", 68) + b"\x00" * 64
    stream = io.BytesIO(preamble(1) + packet + b"BODY")
    assert read_header(stream, BIG, 10) == preamble(1) + packet
    assert stream.read() == b"BODY"


@pytest.mark.parametrize("cut", [16 + 2, 16 + 4, 16 + 50, -1])
def test_truncated_header(akeys, cut):
    header, _ = encrypt(b"t", akeys["current"], akeys["other"])
    expect_user_error(CORRUPT, read_header, io.BytesIO(header[:cut]), BIG, 10)


def test_truncated_second_packet(akeys):
    header, _ = encrypt(b"t", akeys["current"], akeys["other"])
    (first,) = struct.unpack_from("<I", header, 16)
    truncated = header[:16 + first + 10]
    expect_user_error(CORRUPT, read_header, io.BytesIO(truncated), BIG, 10)


def test_header_count_larger_than_packets_present(akeys):
    header, body = encrypt(b"t", akeys["current"])
    lying = preamble(2) + header[16:]  # announces two packets, carries one, no body
    expect_user_error(CORRUPT, read_header, io.BytesIO(lying), BIG, 10)


# -- session_keys -----------------------------------------------------------------------

def decrypt_body(body, session, chunk_size):
    decryptor = BodyDecryptor(session)
    out = bytearray()
    for start in range(0, len(body), chunk_size):
        out += decryptor.update(body[start:start + chunk_size])
    out += decryptor.finish()
    return bytes(out)


def test_session_keys_with_the_right_key(akeys):
    plaintext = os.urandom(1000)
    header, body = encrypt(plaintext, akeys["current"])
    session = session_keys(header, akeys["loaded_current"])
    assert len(session) == 1 and len(session[0]) == 32
    assert decrypt_body(body, session, 4096) == plaintext


def test_session_keys_with_rotation_second_key(akeys):
    """The file is for the old key, which is the second one configured."""
    plaintext = os.urandom(3000)
    header, body = encrypt(plaintext, akeys["old"])
    rotated = akeys["loaded_current"] + akeys["loaded_old"]
    assert decrypt_body(body, session_keys(header, rotated), 4096) == plaintext


def test_session_keys_skip_packets_for_other_recipients(akeys):
    plaintext = os.urandom(3000)
    header, body = encrypt(plaintext, akeys["other"], akeys["current"])
    assert decrypt_body(body, session_keys(header, akeys["loaded_current"]), 4096) == plaintext


def test_wrong_key(akeys):
    header, _ = encrypt(b"secret", akeys["other"])
    expect_user_error(WRONG_KEY, session_keys, header, akeys["loaded_current"])
    expect_user_error(WRONG_KEY, session_keys, header,
                      akeys["loaded_current"] + akeys["loaded_old"])


@pytest.mark.parametrize("method", [0, 1, 99])
def test_wrong_key_for_a_packet_nobody_can_open(akeys, method):
    # well framed (ingest accepts it) but no key opens it
    header = preamble(1) + struct.pack("<II", 100, method) + os.urandom(92)
    assert read_header(io.BytesIO(header), BIG, 10) == header
    expect_user_error(WRONG_KEY, session_keys, header, akeys["loaded_current"])


@pytest.mark.parametrize("edit_list_first", [False, True])
def test_edit_list_is_refused(akeys, edit_list_first):
    data = crypt4gh.header.make_packet_data_enc(0, os.urandom(32))
    edits = crypt4gh.header.make_packet_data_edit_list([0, 100, 50, 10])
    packets = [edits, data] if edit_list_first else [data, edits]
    header = make_header(packets, akeys["current"])
    assert read_header(io.BytesIO(header), BIG, 10) == header
    expect_user_error(EDIT_LIST, session_keys, header, akeys["loaded_current"])


def test_edit_list_for_another_recipient_is_ignored(akeys):
    session = os.urandom(32)
    ours = make_header([crypt4gh.header.make_packet_data_enc(0, session)], akeys["current"])
    theirs = make_header([crypt4gh.header.make_packet_data_edit_list([5, 10])], akeys["other"])
    # one header: our data packet and someone else's edit list
    header = preamble(2) + ours[16:] + theirs[16:]
    assert session_keys(header, akeys["loaded_current"]) == [session]


def test_unknown_packet_type_is_corrupt(akeys):
    header = make_header([struct.pack("<I", 7) + b"\x00" * 36], akeys["current"])
    expect_user_error(CORRUPT, session_keys, header, akeys["loaded_current"])


# -- load_private_keys ------------------------------------------------------------------

def test_load_private_key_with_passphrase_file(akeys):
    loaded = load_private_keys([{"path": akeys["current"].seckey,
                                 "passphrase_file": akeys["pass_file"]}])
    header, body = encrypt(b"via passphrase_file", akeys["current"])
    assert decrypt_body(body, session_keys(header, loaded), 100) == b"via passphrase_file"


def test_loaded_key_is_the_generated_one(akeys):
    (key,) = akeys["loaded_current"]
    assert key.private_bytes_raw() == bytes(akeys["current"].private)


def test_load_private_keys_wrong_passphrase(akeys):
    with pytest.raises(ConfigError) as info:
        load_private_keys([{"path": akeys["current"].seckey, "passphrase": "not it"}])
    assert "keys[0]" in str(info.value)
    assert "not it" not in str(info.value)


def test_load_private_keys_missing_passphrase(akeys):
    with pytest.raises(ConfigError, match=r"keys\[0\]"):
        load_private_keys([{"path": akeys["current"].seckey}])


def test_load_private_keys_missing_file(akeys):
    missing = str(akeys["folder"] / "missing.sec")
    with pytest.raises(ConfigError) as info:
        load_private_keys([{"path": akeys["old"].seckey}, {"path": missing}])
    assert "keys[1].path" in str(info.value) and missing in str(info.value)


def test_load_private_keys_missing_passphrase_file(akeys):
    missing = str(akeys["folder"] / "missing.pass")
    with pytest.raises(ConfigError) as info:
        load_private_keys([{"path": akeys["current"].seckey, "passphrase_file": missing}])
    assert "keys[0].passphrase_file" in str(info.value)


def test_load_private_keys_not_a_key(akeys):
    with pytest.raises(ConfigError, match=r"keys\[0\]"):
        load_private_keys([{"path": akeys["current"].pubkey_path}])


def test_load_private_keys_empty_list():
    with pytest.raises(ConfigError, match="keys"):
        load_private_keys([])


def test_load_private_keys_numeric_passphrase_from_yaml(tmp_path):
    from lega.config import load
    key = KeyPair(tmp_path, "numeric", "123456")
    conf_file = tmp_path / "lega.yaml"
    conf_file.write_text(f"keys:\n  - path: {key.seckey}\n    passphrase: 123456\n")
    loaded = load_private_keys(load(str(conf_file), {})["keys"])
    assert loaded[0].private_bytes_raw() == bytes(key.private)


# -- BodyDecryptor ----------------------------------------------------------------------

SIZES = [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT]
CHUNKS = [1, 1000, CIPHER_SEGMENT - 28, 200000]


@pytest.fixture(scope="module")
def files(akeys):
    made = {}
    for size in SIZES:
        plaintext = os.urandom(size)
        header, body = encrypt(plaintext, akeys["current"])
        made[size] = (plaintext, body, session_keys(header, akeys["loaded_current"]))
    return made


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("size", SIZES)
def test_body_decrypts_in_any_chunking(files, size, chunk_size):
    plaintext, body, session = files[size]
    assert len(body) == size + 28 * -(-size // SEGMENT)
    assert decrypt_body(body, session, chunk_size) == plaintext


def test_body_update_returns_whole_segments_in_order(files):
    plaintext, body, session = files[3 * SEGMENT]
    decryptor = BodyDecryptor(session)
    assert decryptor.update(body[:CIPHER_SEGMENT - 1]) == b""
    assert decryptor.update(body[CIPHER_SEGMENT - 1:2 * CIPHER_SEGMENT + 1]) == \
        plaintext[:2 * SEGMENT]
    assert decryptor.update(body[2 * CIPHER_SEGMENT + 1:]) == plaintext[2 * SEGMENT:]
    assert decryptor.finish() == b""


def test_body_with_several_session_keys(files):
    plaintext, body, session = files[SEGMENT + 1]
    assert decrypt_body(body, [os.urandom(32)] + session, 5000) == plaintext


def test_body_with_a_wrong_session_key(files):
    _, body, _ = files[SEGMENT + 1]
    expect_user_error(CORRUPT, decrypt_body, body, [os.urandom(32)], 5000)


@pytest.mark.parametrize("size, position", [
    (1, 0),                                # nonce
    (1, 12),                               # the only byte of data
    (1, -1),                               # MAC
    (SEGMENT + 1, 0),
    (SEGMENT + 1, 40000),                  # middle of the first segment
    (SEGMENT + 1, CIPHER_SEGMENT - 1),     # first segment's MAC
    (SEGMENT + 1, CIPHER_SEGMENT),         # second segment's nonce
    (SEGMENT + 1, -1),
    (3 * SEGMENT, 2 * CIPHER_SEGMENT + 5),
])
def test_flipped_byte_is_corrupt(files, size, position):
    _, body, session = files[size]
    tampered = bytearray(body)
    tampered[position] ^= 0x01
    for chunk_size in (1000, 200000):
        expect_user_error(CORRUPT, decrypt_body, bytes(tampered), session, chunk_size)


@pytest.mark.parametrize("size, keep", [
    (1, 28),                               # nonce and MAC but the data byte gone
    (1, 5),
    (SEGMENT + 1, CIPHER_SEGMENT + 10),    # second segment cut to 10 bytes
    (SEGMENT + 1, CIPHER_SEGMENT + 28),
    (SEGMENT, CIPHER_SEGMENT - 1),
    (3 * SEGMENT, CIPHER_SEGMENT + 30000),  # cut in the middle of the second segment
    (3 * SEGMENT, 3 * CIPHER_SEGMENT - 1),
])
def test_truncated_body_is_corrupt(files, size, keep):
    _, body, session = files[size]
    assert keep < len(body)
    expect_user_error(CORRUPT, decrypt_body, body[:keep], session, 1000)


def test_segments_are_counted(files):
    plaintext, body, session = files[3 * SEGMENT]
    decryptor = BodyDecryptor(session)
    decryptor.update(body)
    decryptor.finish()
    assert decryptor.segments == 3


# -- rotate_header (SPEC 11) ---------------------------------------------------------------

def test_a_rotated_header_opens_with_the_target_key_alone(akeys):
    plaintext = os.urandom(200_000)
    header, body = encrypt(plaintext, akeys["old"])
    old, current = akeys["loaded_old"], akeys["loaded_current"]
    rotated = rotate_header(header, old, current[0].public_key())
    assert session_keys(rotated, current) == session_keys(header, old)  # the same body keys
    expect_user_error(WRONG_KEY, session_keys, rotated, old)  # the old key no longer opens it
    decryptor = BodyDecryptor(session_keys(rotated, current))
    out = decryptor.update(body) + decryptor.finish()
    assert bytes(out) == plaintext  # the body, unchanged, decrypts with the new header


def test_rotation_leaves_out_every_other_packet(akeys):
    header, _ = encrypt(b"x" * 1000, akeys["old"], akeys["other"])  # also another archive's
    rotated = rotate_header(header, akeys["loaded_old"], akeys["loaded_current"][0].public_key())
    expect_user_error(WRONG_KEY, session_keys, rotated, akeys["loaded_other"])
    assert struct.unpack_from("<I", rotated, 12)[0] == 1  # one packet


def test_rotation_refuses_what_verify_refuses(akeys):
    edit = struct.pack("<IIQQ", 1, 2, 0, 10)  # an edit list packet
    enc = struct.pack("<II", 0, 0) + os.urandom(32)
    header = make_header([enc, edit], akeys["old"])
    target = akeys["loaded_current"][0].public_key()
    expect_user_error(EDIT_LIST, rotate_header, header, akeys["loaded_old"], target)
    plain, _ = encrypt(b"y" * 100, akeys["other"])
    expect_user_error(WRONG_KEY, rotate_header, plain, akeys["loaded_old"], target)


# -- how a body ends: the segment boundaries (issue 17) ------------------------------------

def sealed(key, plaintext):
    """One Crypt4GH segment: a nonce, the data, the MAC."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    nonce = os.urandom(12)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, None)


def flip_last(data):
    return data[:-1] + bytes([data[-1] ^ 1])


@pytest.mark.parametrize("body_plain", [
    pytest.param([], id="0 bytes: no segment"),
    pytest.param([b""], id="exactly 28: an empty segment that authenticates (Go's empty file)"),
    pytest.param([b"x"], id="29: one byte"),
    pytest.param([b"a" * SEGMENT], id="one full segment"),
    pytest.param([b"a" * SEGMENT, b""], id="a full segment plus 28: an empty last one"),
    pytest.param([b"a" * SEGMENT, b"z"], id="a full segment plus 29"),
])
@pytest.mark.parametrize("chunk_size", [1, 28, 1000, CIPHER_SEGMENT, BIG])
def test_every_way_a_good_body_ends(body_plain, chunk_size):
    key = os.urandom(32)
    body = b"".join(sealed(key, p) for p in body_plain)
    assert len(body) == sum(len(p) + 28 for p in body_plain)
    assert decrypt_body(body, [key], chunk_size) == b"".join(body_plain)


@pytest.mark.parametrize("body, says", [
    pytest.param(lambda k: sealed(k, b"")[:27], "has 27 bytes, fewer than a nonce and a MAC (28)",
                 id="27: truncated"),
    pytest.param(lambda k: sealed(k, b"a" * SEGMENT) + sealed(k, b"")[:20],
                 "has 20 bytes, fewer than a nonce and a MAC (28)", id="full + 20: truncated"),
    pytest.param(lambda k: sealed(os.urandom(32), b""), "Segment 1 of the file, its last",
                 id="28 that does not authenticate"),
    pytest.param(lambda k: sealed(k, b"a" * SEGMENT) + sealed(k, b"xy")[:29],
                 "Segment 2 of the file, its last", id="full + 29 cut from 30"),
    pytest.param(lambda k: flip_last(sealed(k, b"a" * SEGMENT)) + sealed(k, b"z"),
                 "Segment 1 of the file does not decrypt", id="a full segment altered"),
])
def test_every_way_a_bad_body_ends_says_which(body, says):
    key = os.urandom(32)
    error = expect_user_error(CORRUPT, decrypt_body, body(key), [key], 1000)
    assert says in error.reason, error.reason
    assert ("truncated" in error.reason) and ("upload it again" in error.reason)


# -- keys in PKCS#8 PEM, as the Java implementation writes them ----------------------------

def write_pkcs8(path, key):
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return str(path)


def test_a_pkcs8_x25519_key_is_read(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    key = X25519PrivateKey.generate()
    (loaded,) = load_private_keys([{"path": write_pkcs8(tmp_path / "k.pem", key)}])
    assert loaded.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()


def test_a_pkcs8_key_of_another_kind_is_refused_clearly(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = write_pkcs8(tmp_path / "ed.pem", Ed25519PrivateKey.generate())
    with pytest.raises(ConfigError, match="Ed25519PrivateKey, not an X25519 key"):
        load_private_keys([{"path": path}])


# -- who may read a key file ----------------------------------------------------------------

@pytest.mark.parametrize("mode, group, ok", [
    (0o600, "ours", True),
    (0o400, "ours", True),
    (0o440, "ours", True),     # as Kubernetes mounts a secret (root, the pod's fsGroup)
    (0o640, "another", False),
    (0o604, "ours", False),    # others: never
    (0o644, "ours", False),
])
def test_who_may_read_the_key_file(akeys, tmp_path, mode, group, ok):
    if os.geteuid() != 0 and group == "another":
        pytest.skip("changing a file's group to one we are not in needs root")
    path = tmp_path / "key.sec"
    path.write_bytes(open(akeys["old"].seckey, "rb").read())
    if group == "another":
        os.chown(path, -1, os.getgid() + 4242)
    path.chmod(mode)
    if ok:
        assert load_private_keys([{"path": str(path)}])
    else:
        with pytest.raises(ConfigError, match="can be read by other users"):
            load_private_keys([{"path": str(path)}])
