#!/usr/bin/env python3
"""`mc ready local`, MinIO's client's health command: exit 0 once the S3 API on port 9000
of this container answers (any HTTP status: an anonymous request is refused), 1 if not."""
import sys
import urllib.error
import urllib.request

if sys.argv[1:] != ["ready", "local"]:
    sys.exit("this stand-in knows only `mc ready local`")
try:
    urllib.request.urlopen("http://127.0.0.1:9000/", timeout=4)
except urllib.error.HTTPError:
    pass
except OSError as error:
    sys.exit(f"not ready: {error}")
