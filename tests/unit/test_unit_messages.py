"""lega.messages: parsing incoming messages, checking outgoing ones, and compatibility
with the federated EGA schemas (../shared/fega-schemas, when present)."""

import json
from pathlib import Path

import jsonschema
import pytest

from lega import messages
from lega.errors import BAD_MESSAGE, UserError

FEGA_SCHEMAS = Path(__file__).resolve().parents[2] / ".." / "shared" / "fega-schemas"

SHA256 = "82e4e60e7beb3db2e06a00a079788f7d71f75b61a4b75f28c4c942703dabb6d6"
MD5 = "7ac236b1a8dce2dac89e7cf45d2b48bd"
FILE_ID = "0b7c2a5e-4f2d-4c8e-9a51-3b7a1c9d0e12"


def raw(body):
    return json.dumps(body).encode()


def expect_bad(kind, data):
    with pytest.raises(UserError) as info:
        messages.parse(kind, data)
    assert info.value.code == BAD_MESSAGE
    assert info.value.reason
    return info.value


# -- parse: valid messages --------------------------------------------------------------

TRIGGERS = [
    {"user": "alice", "filepath": "runs/sample.bam.c4gh"},
    {"type": "ingest", "user": "alice", "filepath": "sample.c4gh"},
    {"type": "cancel", "user": "alice", "filepath": "sample.c4gh"},
    {"type": "ingest", "user": "alice", "filepath": "sample.c4gh",
     "encrypted_checksums": [{"type": "sha256", "value": SHA256},
                             {"type": "md5", "value": MD5.upper()}]},
    {"type": "ingest", "user": "alice", "filepath": "sample.c4gh", "encrypted_checksums": [],
     "extra": {"anything": [1, 2]}},
]


@pytest.mark.parametrize("body", TRIGGERS)
def test_valid_triggers(body):
    assert messages.parse(messages.TRIGGER, raw(body)) == body


def test_parse_accepts_str_and_bytearray():
    body = TRIGGERS[0]
    assert messages.parse(messages.TRIGGER, json.dumps(body)) == body
    assert messages.parse(messages.TRIGGER, bytearray(raw(body))) == body


def test_parse_accepts_non_ascii_utf8():
    body = {"user": "jöhn.dœ@example.org", "filepath": "données/échantillon ✓.c4gh"}
    assert messages.parse(messages.TRIGGER, json.dumps(body, ensure_ascii=False).encode()) == body


ACCESSION = {"type": "accession", "user": "alice", "filepath": "sample.c4gh",
             "accession_id": "EGAF00000000001",
             "decrypted_checksums": [{"type": "sha256", "value": SHA256},
                                     {"type": "md5", "value": MD5}]}


@pytest.mark.parametrize("changes", [
    {},
    {"accession_id": "urn:neic:ega-file-42"},  # any non-blank id
    {"decrypted_checksums": [{"type": "md5", "value": MD5}]},
    {"extra": True},
])
def test_valid_accessions(changes):
    body = {**ACCESSION, **changes}
    assert messages.parse(messages.ACCESSION, raw(body)) == body


VERIFICATION = {"user": "alice", "filepath": "sample.c4gh", "file_id": FILE_ID,
                "archive_path": f"0b/7c/{FILE_ID}",
                "encrypted_checksums": [{"type": "sha256", "value": SHA256}],
                "re_verify": False}


@pytest.mark.parametrize("changes", [{}, {"re_verify": True}, {"encrypted_checksums": []}])
def test_valid_verifications(changes):
    body = {**VERIFICATION, **changes}
    assert messages.parse(messages.VERIFICATION, raw(body)) == body


# -- parse: bad messages ----------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"",
    b"not json at all",
    b"{'user': 'alice'}",
    b'{"user": "alice", "filepath": "x"',
    b"\x00\x01\x02",
])
def test_not_json(data):
    expect_bad(messages.TRIGGER, data)


def test_invalid_utf8():
    expect_bad(messages.TRIGGER, b'{"user": "al\xff\xfeice", "filepath": "x.c4gh"}')


@pytest.mark.parametrize("data", [b"[]", b'[{"user": "alice", "filepath": "x"}]', b'"text"',
                                  b"42", b"null", b"true"])
def test_not_an_object(data):
    expect_bad(messages.TRIGGER, data)


@pytest.mark.parametrize("body", [
    {"filepath": "sample.c4gh"},
    {"user": "alice"},
    {"user": "", "filepath": "sample.c4gh"},
    {"user": "   ", "filepath": "sample.c4gh"},
    {"user": 42, "filepath": "sample.c4gh"},
    {"user": "alice", "filepath": ""},
    {"user": "alice", "filepath": None},
    {"type": "delete", "user": "alice", "filepath": "sample.c4gh"},
    {"type": "accession", "user": "alice", "filepath": "sample.c4gh"},
    {"type": None, "user": "alice", "filepath": "sample.c4gh"},
])
def test_invalid_triggers(body):
    expect_bad(messages.TRIGGER, raw(body))


def test_missing_user_is_named():
    error = expect_bad(messages.TRIGGER, raw({"filepath": "sample.c4gh"}))
    assert "user" in error.reason


@pytest.mark.parametrize("checksums", [
    [{"type": "sha256", "value": SHA256[:-1] + "g"}],   # not hex
    [{"type": "sha256", "value": SHA256[:-1]}],         # too short
    [{"type": "sha256", "value": SHA256 + "0"}],        # too long
    [{"type": "md5", "value": SHA256}],                 # sha256 length for md5
    [{"type": "md5", "value": " " + MD5}],
    [{"type": "sha1", "value": "a" * 40}],
    [{"type": "sha256"}],
    [{"type": "sha256", "value": SHA256, "extra": 1}],
    [SHA256],
    {"type": "sha256", "value": SHA256},                # not a list
])
def test_bad_checksums(checksums):
    body = {"type": "ingest", "user": "alice", "filepath": "sample.c4gh",
            "encrypted_checksums": checksums}
    expect_bad(messages.TRIGGER, raw(body))


@pytest.mark.parametrize("changes", [
    {"accession_id": ""},
    {"accession_id": "   "},
    {"accession_id": None},
    {"type": "ingest"},
    {"decrypted_checksums": [{"type": "md5", "value": "xyz"}]},
])
def test_invalid_accessions(changes):
    expect_bad(messages.ACCESSION, raw({**ACCESSION, **changes}))


@pytest.mark.parametrize("missing", ["type", "user", "filepath", "accession_id",
                                     "decrypted_checksums"])
def test_accession_missing_field(missing):
    body = {k: v for k, v in ACCESSION.items() if k != missing}
    expect_bad(messages.ACCESSION, raw(body))


@pytest.mark.parametrize("changes", [
    {"file_id": "not-a-uuid"},
    {"re_verify": "false"},
    {"archive_path": ""},
])
def test_invalid_verifications(changes):
    expect_bad(messages.VERIFICATION, raw({**VERIFICATION, **changes}))


def test_deeply_nested_json_is_a_bad_message():
    expect_bad(messages.TRIGGER, b"[" * 100000 + b"]" * 100000)


# -- check_outgoing ---------------------------------------------------------------------

def test_check_outgoing_returns_valid_body():
    body = {"type": "verified", "user": "alice", "filepath": "sample.c4gh",
            "decrypted_checksums": messages.checksums(sha256=SHA256, md5=MD5),
            "encrypted_checksums": messages.checksums(sha256=SHA256)}
    assert messages.check_outgoing(messages.ACCESSION_REQUEST, body) is body


@pytest.mark.parametrize("kind, body", [
    (messages.ACCESSION_REQUEST, {"type": "verified", "user": "alice", "filepath": "x.c4gh",
                                  "decrypted_checksums": messages.checksums(sha256=SHA256),
                                  "encrypted_checksums": messages.checksums(sha256=SHA256)}),
    (messages.ACCESSION_REQUEST, {"type": "verified", "user": "alice", "filepath": "x.c4gh",
                                  "decrypted_checksums": messages.checksums(md5=MD5),
                                  "encrypted_checksums": messages.checksums(sha256=SHA256)}),
    # today's Central EGA expects the type and the upload's checksums too
    (messages.ACCESSION_REQUEST, {"user": "alice", "filepath": "sample.c4gh",
                                  "decrypted_checksums": messages.checksums(sha256=SHA256,
                                                                            md5=MD5),
                                  "encrypted_checksums": messages.checksums(sha256=SHA256)}),
    (messages.ACCESSION_REQUEST, {"type": "verified", "user": "alice", "filepath": "x.c4gh",
                                  "decrypted_checksums": messages.checksums(sha256=SHA256,
                                                                            md5=MD5)}),
    (messages.COMPLETION, {"user": "alice", "filepath": "sample.c4gh", "accession_id": "",
                           "decrypted_checksums": messages.checksums(sha256=SHA256, md5=MD5)}),
    (messages.PROCESSING, {"user": "alice", "filepath": "sample.c4gh", "status": "done"}),
    (messages.ERROR, {"error": "Not Found", "reason": "x", "original-message": "{}"}),
    (messages.ERROR, {"error": "not_found", "reason": "", "original-message": "{}"}),
    (messages.ERROR, {"error": "not_found", "reason": "gone", "original-message": {}}),
    (messages.VERIFICATION, {**VERIFICATION, "re_verify": None}),
])
def test_check_outgoing_refuses_invalid(kind, body):
    with pytest.raises(ValueError, match="refusing to send"):
        messages.check_outgoing(kind, body)


def test_checksum_helpers():
    assert messages.checksums(sha256=SHA256, md5=None) == [{"type": "sha256", "value": SHA256}]
    assert messages.checksum_dict([{"type": "md5", "value": MD5.upper()}]) == {"md5": MD5}
    assert messages.checksum_dict(None) == {}


# -- federated EGA schemas --------------------------------------------------------------

def fega(name):
    if not FEGA_SCHEMAS.is_dir():
        pytest.skip(f"no federated EGA schemas at {FEGA_SCHEMAS}")
    schema = json.loads((FEGA_SCHEMAS / f"{name}.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def assert_fega_valid(name, body):
    errors = [e.message for e in fega(name).iter_errors(body)]
    assert not errors, f"not a valid fega {name}: {errors}"


def assert_fega_invalid(name, body):
    assert list(fega(name).iter_errors(body)), f"unexpectedly valid fega {name}"


FEGA_SHA256 = {"type": "sha256",
               "value": "82E4e60e7beb3db2e06A00a079788F7d71f75b61a4b75f28c4c942703dabb6d6"}
FEGA_MD5 = {"type": "md5", "value": "7Ac236b1a8dce2dac89e7cf45d2b48BD"}

CEGA_TRIGGERS = [
    # the schema's own examples
    {"type": "ingest", "user": "user.name@central-ega.eu",
     "filepath": "/ega/inbox/user.name@central-ega.eu/the-file.c4gh",
     "encrypted_checksums": [FEGA_SHA256, FEGA_MD5]},
    {"type": "cancel", "user": "user.name@central-ega.eu", "filepath": "the-file.c4gh"},
    {"type": "ingest", "user": "ab", "filepath": "d/f.c4gh", "encrypted_checksums": []},
    {"type": "ingest", "user": "user", "filepath": "file.c4gh",
     "encrypted_checksums": [FEGA_MD5], "extra": {"any": "thing"}},
]

CEGA_ACCESSIONS = [
    {"type": "accession", "user": "user.name@central-ega.eu",
     "filepath": "/ega/inbox/user.name@central-ega.eu/the-file.c4gh",
     "accession_id": "EGAF12345678901", "decrypted_checksums": [FEGA_SHA256, FEGA_MD5]},
    {"type": "accession", "user": "u", "filepath": "f", "accession_id": "EGAF00000000000",
     "decrypted_checksums": [FEGA_MD5]},
    {"type": "accession", "user": "u", "filepath": "f", "accession_id": "EGAF99999999999",
     "decrypted_checksums": [], "dataset": "EGAD00000000001"},
]

VERIFICATIONS = [
    VERIFICATION,
    {**VERIFICATION, "re_verify": True, "encrypted_checksums": [FEGA_SHA256, FEGA_MD5]},
]


@pytest.mark.parametrize("body", CEGA_TRIGGERS)
def test_fega_valid_triggers_are_accepted(body):
    assert_fega_valid("ingestion-trigger", body)
    assert messages.parse(messages.TRIGGER, raw(body)) == body


@pytest.mark.parametrize("body", CEGA_ACCESSIONS)
def test_fega_valid_accessions_are_accepted(body):
    assert_fega_valid("ingestion-accession", body)
    assert messages.parse(messages.ACCESSION, raw(body)) == body


@pytest.mark.parametrize("body", VERIFICATIONS)
def test_fega_valid_verifications_are_accepted(body):
    assert_fega_valid("ingestion-verification", body)
    assert messages.parse(messages.VERIFICATION, raw(body)) == body


def test_fega_and_we_agree_on_a_bad_checksum():
    body = {**CEGA_TRIGGERS[0], "encrypted_checksums": [{"type": "sha256", "value": "zz"}]}
    assert_fega_invalid("ingestion-trigger", body)
    expect_bad(messages.TRIGGER, raw(body))


def our_accession_request():
    # as verify.request_accession builds it
    return messages.check_outgoing(messages.ACCESSION_REQUEST, {
        "type": "verified",
        "user": "user.name@central-ega.eu",
        "filepath": "dir/the-file.c4gh",
        "decrypted_checksums": messages.checksums(sha256=SHA256, md5=MD5),
        "encrypted_checksums": messages.checksums(sha256=SHA256, md5=MD5),
    })


def test_our_accession_request_is_fega_valid():
    assert_fega_valid("ingestion-accession-request", our_accession_request())


def test_our_completion_is_fega_valid():
    body = messages.check_outgoing(messages.COMPLETION, {
        "user": "user.name@central-ega.eu",
        "filepath": "dir/the-file.c4gh",
        "accession_id": "EGAF12345678901",
        "decrypted_checksums": messages.checksums(sha256=SHA256, md5=MD5),
    })
    assert_fega_valid("ingestion-completion", body)


@pytest.mark.parametrize("code", ["not_found", "not_crypt4gh", "wrong_key", "corrupt",
                                  "checksum_mismatch", "bad_message"])
def test_our_error_is_both_fega_user_error_and_info_error(code):
    original = json.dumps(CEGA_TRIGGERS[0])
    body = messages.check_outgoing(messages.ERROR, {
        "error": code,
        "reason": "The file 'the-file.c4gh' was not found in your inbox.",
        "original-message": original,
        "user": "user.name@central-ega.eu",
        "filepath": "dir/the-file.c4gh",
    })
    assert_fega_valid("ingestion-user-error", body)
    assert_fega_valid("info-error", body)


def test_our_error_for_an_unreadable_message_is_a_fega_info_error():
    # a message that is not even JSON: no user or filepath is known
    body = messages.check_outgoing(messages.ERROR, {
        "error": "bad_message", "reason": "The message is not valid JSON.",
        "original-message": "\ufffd not json"})
    assert_fega_valid("info-error", body)


# -- the federated queue: every type, by its schema (SPEC 8) ------------------------------

MEMBER = {"email": "jane@example.org", "country": "NO", "is_main": True, "username": "jane",
          "full_name": "Jane Doe", "institution": "UiO", "password_hash": "$2b$12$hash",
          "member_type": "member"}
KEYS = [{"key": "ssh-ed25519 AAAA", "type": "ssh-ed25519"}]

# (schema in ../shared/fega-schemas, a message of that type valid against it)
FEDERATED = [
    ("ingestion-trigger", CEGA_TRIGGERS[0]),
    ("ingestion-trigger", CEGA_TRIGGERS[1]),
    ("ingestion-accession", CEGA_ACCESSIONS[0]),
    ("dataset-mapping", {"type": "mapping", "dataset_id": "EGAD12345678901",
                         "accession_ids": ["EGAF12345678901", "EGAF12345678902"]}),
    ("dataset-mapping", {"type": "mapping", "dataset_id": "EGAD12345678901",
                         "accession_ids": []}),
    ("dataset-release", {"type": "release", "dataset_id": "EGAD12345678901"}),
    ("dataset-deprecate", {"type": "deprecate", "dataset_id": "EGAD12345678901",
                           "extra": 1}),
    ("localega/dataset-permission", {
        "type": "permission", "dataset_id": "EGAD12345678901",
        "created_at": "2026-01-01T00:00:00Z", "edited_at": "2026-01-02T00:00:00Z",
        "expires_at": None, "users": [{k: v for k, v in MEMBER.items()
                                       if k not in ("is_main", "member_type")} | {"keys": KEYS}]}),
    ("localega/dataset-permission-deleted", {"type": "permission.deleted", "user": "",
                                             "dataset_id": "EGAD12345678901"}),
    ("localega/dac-information", {"type": "dac", "accession_id": "EGAC12345678901",
                                  "title": "", "description": ""}),
    ("localega/dac-dataset-mapping", {
        "type": "dac.dataset", "accession_id": "EGAC12345678901", "title": "t",
        "description": "d", "users": [MEMBER],
        "datasets": [{"accession_id": "EGAD12345678901", "title": "t", "description": "d"}]}),
    ("localega/dac-members", {"type": "dac.members", "accession_id": "EGAC12345678901",
                              "title": "t", "description": "d",
                              "users": [MEMBER, {**MEMBER, "member_type": "admin"}]}),
    ("localega/user-password-updated", {"type": "password.updated", "user": "jane",
                                        "password_hash": ""}),
    ("localega/user-contact-updated", {"type": "contact.updated", "user": "jane",
                                       "email": "j@example.org", "country": "NO",
                                       "full_name": "Jane", "institution": "UiO"}),
    ("localega/user-keys-updated", {"type": "keys.updated", "user": "jane", "keys": []}),
]


@pytest.mark.parametrize("schema, body", FEDERATED, ids=[f"{s}-{i}" for i, (s, _) in
                                                          enumerate(FEDERATED)])
def test_every_fega_valid_federated_message_is_accepted(schema, body):
    if schema == "localega/dac-members":  # requires title and description, unlisted
        validator = fega(schema)
        relaxed = {**validator.schema, "required": ["type", "accession_id", "users"]}
        listed = {k: v for k, v in body.items() if k not in ("title", "description")}
        assert not list(jsonschema.Draft7Validator(relaxed).iter_errors(listed))
    else:
        assert_fega_valid(schema, body)
    assert messages.parse(messages.FEDERATED, raw(body)) == body
    # and with an extra field (the localega schemas forbid them; SPEC 8 allows them)
    extra = {**body, "sent_by": "central-ega"}
    assert messages.parse(messages.FEDERATED, raw(extra)) == extra


def test_every_federated_type_has_a_schema_of_ours():
    assert set(messages.FEDERATED_TYPES) == {
        "ingest", "cancel", "accession", "mapping", "release", "deprecate", "permission",
        "permission.deleted", "dac", "dac.dataset", "dac.members", "password.updated",
        "contact.updated", "keys.updated", "heartbeat"}
    for kind in set(messages.FEDERATED_TYPES.values()) - {None}:
        messages.validator(kind)  # the schema exists and is a valid draft-07 one


def test_dac_members_needs_title_and_description():
    body = {k: v for k, v in FEDERATED[11][1].items() if k not in ("title", "description")}
    expect_bad(messages.FEDERATED, raw(body))  # the schema requires them, unlisted
    assert messages.parse(messages.FEDERATED, raw({**body, "title": 1, "description": None}))


def test_a_heartbeat_needs_nothing_but_its_type():
    assert messages.parse(messages.FEDERATED, b'{"type": "heartbeat"}') == {"type": "heartbeat"}
    assert messages.parse(messages.FEDERATED, b'{"type": "heartbeat", "at": 1}')


@pytest.mark.parametrize("body, says", [
    ({"user": "u", "filepath": "f"}, "type is none"),
    ({"type": "Ingest", "user": "u", "filepath": "f"}, 'type is "Ingest"'),
    ({"type": None}, "type is null"),
    ({"type": {"nested": "x"}}, 'type is {"nested": "x"}'),
    ({"type": "verified", "user": "u", "filepath": "f"}, 'type is "verified"'),  # ours
])
def test_an_unknown_type_is_a_bad_message(body, says):
    error = expect_bad(messages.FEDERATED, raw(body))
    assert says in error.reason and "one of ingest, cancel" in error.reason
    assert error.reportable


def test_a_federated_message_is_checked_against_its_own_type():
    # valid as a trigger, but it says it is an accession
    error = expect_bad(messages.FEDERATED, raw({**CEGA_TRIGGERS[1], "type": "accession"}))
    assert "ingestion-accession" in error.reason and error.reportable


@pytest.mark.parametrize("body", [
    {"type": "password.updated", "user": "u", "password_hash": ["$2b$12$SECRET"]},
    {"type": "contact.updated", "user": "u", "email": {"at": "SECRET@example.org"},
     "country": "NO", "full_name": "J", "institution": "I"},
    {"type": "keys.updated", "user": "u", "keys": [{"key": 12345, "type": "SECRET"}]},
    {"type": "keys.updated", "user": "u", "keys": "ssh-ed25519 SECRET"},
    {"type": "dac.members", "accession_id": "EGAC12345678901", "title": "t",
     "description": "d", "users": [{**MEMBER, "member_type": "SECRET"}]},
    {"type": "permission", "dataset_id": "EGAD12345678901", "created_at": "x",
     "edited_at": "y", "users": [{"email": "SECRET@example.org", "keys": "SECRET"}]},
])
def test_a_bad_metadata_message_says_where_never_what(body):
    error = expect_bad(messages.FEDERATED, raw(body))
    assert "SECRET" not in error.reason and "12345" not in error.reason, error.reason
    assert not error.reportable  # its original is not sent back to Central EGA either


def test_a_bad_ingestion_message_still_shows_the_value():
    body = {**CEGA_TRIGGERS[1], "filepath": 5}
    assert "5 is not of type 'string'" in expect_bad(messages.FEDERATED, raw(body)).reason


def test_redacted_hides_secret_fields_at_any_depth():
    body = {"type": "permission", "users": [{"email": "a@b", "password_hash": "h",
                                             "keys": [{"key": "k"}], "username": "jane"}],
            "email": "c@d"}
    assert messages.redacted(body) == {"type": "permission", "email": "***",
                                       "users": [{"email": "***", "password_hash": "***",
                                                  "keys": "***", "username": "jane"}]}
    assert messages.holds_secrets(body) and not messages.holds_secrets({"type": ["dac"]})


# -- the datasets queue (SPEC 9) ---------------------------------------------------------

@pytest.mark.parametrize("schema, body", [(s, b) for s, b in FEDERATED
                                          if s.startswith("dataset-")])
def test_the_datasets_queue_takes_the_dataset_types(schema, body):
    assert messages.parse(messages.DATASETS, raw(body)) == body


@pytest.mark.parametrize("body, says", [
    (CEGA_TRIGGERS[0], "not one of mapping, release, deprecate"),
    ({"type": "heartbeat"}, "not one of mapping, release, deprecate"),
    ({"type": "release", "dataset_id": "EGAD1234567890"}, "dataset_id"),  # 10 digits
    ({"type": "release", "dataset_id": "egad12345678901"}, "dataset_id"),
    ({"type": "deprecate", "dataset_id": "EGAD12345678901\n"}, "dataset_id"),
    ({"type": "mapping", "dataset_id": "EGAD12345678901"}, "'accession_ids' is a required"),
    ({"type": "mapping", "dataset_id": "EGAD12345678901", "accession_ids": [""]},
     "accession_ids/0"),
    ({"type": "mapping", "dataset_id": "EGAD12345678901", "accession_ids": "EGAF1"},
     "accession_ids"),
])
def test_a_bad_dataset_message(body, says):
    error = expect_bad(messages.DATASETS, raw(body))
    assert says in error.reason and error.reportable  # no secrets: Central EGA is told
    # the real schema refuses it too, but for a final newline (its pattern ends with $,
    # which matches before one; the datasets table would refuse it)
    if body.get("type") in messages.DATASET_TYPES and not body["dataset_id"].endswith("\n"):
        assert list(fega(f"dataset-{body['type']}").iter_errors(body))
