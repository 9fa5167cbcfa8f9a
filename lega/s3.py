"""S3 object storage (AWS S3, Ceph RGW, MinIO, SeaweedFS...), shared by the S3 vault
and the S3 inbox: the client, and reading an object as a stream of ranged GETs.
"""

import io
import logging

import boto3
import botocore.exceptions
from botocore.config import Config as BotoConfig

LOG = logging.getLogger(__name__)

# how much one ranged GET asks for; the body is read from the socket as it comes
READ_WINDOW = 64 * 1024 * 1024


def client(settings):
    """A boto3 S3 client from the ``<section>.s3`` settings.

    Credentials are the settings' access and secret key when given (or their ``_file``
    variants), else boto3's usual chain (AWS_ACCESS_KEY_ID..., ~/.aws, instance roles).
    """
    config = BotoConfig(
        s3={"addressing_style": settings["addressing"],
            "payload_signing_enabled": settings["sign_payload"]},
        signature_version="s3v4",
        connect_timeout=10,
        read_timeout=120,
        retries={"max_attempts": 3, "mode": "standard"},
        # S3-compatible servers do not all know the newer flexible checksums
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.client(
        "s3",
        endpoint_url=settings["endpoint"] or None,
        region_name=settings["region"] or None,
        aws_access_key_id=settings["access_key"] or None,
        aws_secret_access_key=settings["secret_key"] or None,
        verify=settings["ca_bundle"] or True,
        config=config,
    )


def is_missing(error):
    """Whether a botocore ClientError says the key or bucket does not exist."""
    if not isinstance(error, botocore.exceptions.ClientError):
        return False
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


def object_size(s3, bucket, key):
    """The size of an object; FileNotFoundError if there is none."""
    try:
        return s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    except botocore.exceptions.ClientError as e:
        if is_missing(e):
            raise FileNotFoundError(f"s3://{bucket}/{key}") from None
        raise


class ObjectChanged(Exception):
    """A pinned object was replaced while being read."""


class ObjectReader(io.RawIOBase):
    """An S3 object as a read-only stream: ranged GETs of ``window`` bytes, each read
    from the socket as the caller reads, so nothing is buffered whole."""

    def __init__(self, s3, bucket, key, size=None, window=READ_WINDOW, pinned=False):
        """With ``pinned``, every range must come from the object as it was when opened
        (its ETag), else ``ObjectChanged`` is raised."""
        super().__init__()
        self.s3, self.bucket, self.key, self.window = s3, bucket, key, window
        self.etag = None
        if size is None or pinned:
            try:
                head = s3.head_object(Bucket=bucket, Key=key)
            except botocore.exceptions.ClientError as e:
                if is_missing(e):
                    raise FileNotFoundError(f"s3://{bucket}/{key}") from None
                raise
            size = head["ContentLength"]
            self.etag = head.get("ETag") if pinned else None
        self.size = size
        self.position = 0
        self._body = None
        self._left_in_body = 0

    def readable(self):
        return True

    def _next_range(self):
        end = min(self.position + self.window, self.size) - 1
        extra = {"IfMatch": self.etag} if self.etag else {}
        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=self.key,
                                          Range=f"bytes={self.position}-{end}", **extra)
        except botocore.exceptions.ClientError as e:
            if is_missing(e):
                raise FileNotFoundError(f"s3://{self.bucket}/{self.key}") from None
            if str(e.response.get("Error", {}).get("Code")) in ("PreconditionFailed", "412"):
                raise ObjectChanged(f"s3://{self.bucket}/{self.key}") from None
            raise
        self._body = response["Body"]
        self._left_in_body = end - self.position + 1

    def read(self, size=-1):
        if self.position >= self.size:
            return b""
        if self._left_in_body == 0:
            self._next_range()
        want = self._left_in_body if size is None or size < 0 else min(size, self._left_in_body)
        data = self._body.read(want)
        if not data:
            raise IOError(f"s3://{self.bucket}/{self.key} ended at byte {self.position} of "
                          f"{self.size}")
        self.position += len(data)
        self._left_in_body -= len(data)
        return data

    def readinto(self, buffer):
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self):
        if self._body is not None:
            self._body.close()
            self._body = None
        super().close()
