"""The two kinds of failure a worker meets.

A ``UserError`` is the submitter's (or Central EGA's message's) fault: it is reported
to Central EGA on ``files.error``, the file gets the ``error`` status with the same
reason, and nothing of it stays in the vault. Anything else is ours (database, vault,
broker trouble, a bug) and is retried with back-off, then parked for operators; it is
never blamed on the submitter.
"""

# The stable codes Central EGA sees in files.error
NOT_FOUND = "not_found"
BAD_PATH = "bad_path"
NOT_CRYPT4GH = "not_crypt4gh"
WRONG_KEY = "wrong_key"
EDIT_LIST = "edit_list"
CORRUPT = "corrupt"
CHECKSUM_MISMATCH = "checksum_mismatch"
BAD_MESSAGE = "bad_message"
DUPLICATE_ACCESSION = "duplicate_accession"
NOT_INGESTED = "not_ingested"
FILE_CHANGED = "file_changed"
UNKNOWN_ACCESSION = "unknown_accession"  # a dataset message names what this node has not
IN_DATASET = "in_dataset"                # a cancel for a file of a dataset in use


class UserError(Exception):
    """The file or the message is at fault; the reason is shown to the submitter."""

    def __init__(self, code, reason, reportable=True):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        # False for a message whose original must not be sent back (it holds secrets)
        self.reportable = reportable


class NotReady(Exception):
    """The message arrived before what it needs (e.g. an accession before verify):
    try again later, with back-off. With ``give_up``, a ``UserError``: what the sender
    is told once the waits are over and it is still not ready (a dataset mapping that
    names a file this node does not have); without, the message is parked."""

    def __init__(self, reason, give_up=None):
        super().__init__(reason)
        self.give_up = give_up


class IntegrityError(Exception):
    """Our own copy is not what we recorded (vault object altered or missing): an
    operator's problem, never the submitter's."""
