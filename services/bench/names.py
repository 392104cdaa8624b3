"""The names only `mesh bench` uses, on a scratch server: its raw baseline's subjects, bucket and stream.

They are the bench's, not the mesh's: subjects.md lists them in their own section ("Bench names").
"""

from __future__ import annotations

from typing import Final

RAW_PREFIX: Final = "_bench.raw"
RAW_BUCKET: Final = "mesh_bench_raw"  # only `mesh bench` creates it (its raw baseline)
RAW_MAIL_SUBJECT: Final = "_bench.raw.mail"
RAW_MAIL_STREAM: Final = "mesh_bench_raw_mail"  # only `mesh bench` creates it (its raw SMTP baseline)

SUBJECT_PATTERNS: Final = (
    "_bench.raw.echo|turn|hot|slow[.<key>]",
    "$KV.mesh_bench_raw.<key>",
    "_bench.raw.mail",
)
BUCKETS: Final = (RAW_BUCKET, RAW_MAIL_STREAM)
