"""Coverage-guided fuzzing (atheris, libFuzzer) of what submitters and Central EGA
control, run by test_fuzz.py in a process of its own:

    python atheris_target.py crypt4gh|messages KEYFILE [libFuzzer options] CORPUS...

``crypt4gh``: the bytes are an upload; its header is read within bounds, opened with
the key in KEYFILE (a raw X25519 private key) and the body decrypted, as ingest and
verify do. ``messages``: the bytes are a message body for each kind Central EGA sends
or ingest hands over. A UserError of the expected codes is the only failure allowed:
anything else escapes, and libFuzzer reports it as a crash with the input that made it.
"""

import io
import sys

import atheris

with atheris.instrument_imports():
    from lega import c4gh, messages
    from lega.errors import UserError

MAX_HEADER, MAX_PACKETS = 4096, 8
HEADER_CODES = {"not_crypt4gh", "corrupt", "wrong_key", "edit_list"}


def crypt4gh_target(keys):
    def target(data):
        stream = io.BytesIO(data)
        try:
            header = c4gh.read_header(stream, MAX_HEADER, MAX_PACKETS)
            if len(header) > MAX_HEADER:
                raise AssertionError(f"a header of {len(header)} bytes got through")
            decryptor = c4gh.BodyDecryptor(c4gh.session_keys(header, keys))
            decryptor.update(stream.read())
            decryptor.finish()
        except UserError as e:
            if e.code not in HEADER_CODES:
                raise
    return target


def messages_target(data):
    for kind in (messages.TRIGGER, messages.ACCESSION, messages.VERIFICATION):
        try:
            parsed = messages.parse(kind, data)
        except UserError as e:
            if e.code != "bad_message" or not e.reason:
                raise
        else:
            if not isinstance(parsed.get("user"), str):
                raise AssertionError(f"{kind} accepted without a user: {parsed!r}")


def main():
    mode, key_file, *fuzzer_args = sys.argv[1:]
    if mode == "crypt4gh":
        with open(key_file, "rb") as f:
            keys = [c4gh.X25519PrivateKey.from_private_bytes(f.read())]
        target = crypt4gh_target(keys)
    else:
        target = messages_target
    atheris.Setup([sys.argv[0], *fuzzer_args], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
