"""subjects.md is the human contract; these tests keep it and the code in agreement."""

import re
from pathlib import Path

import mesh
from mesh import errors, subjects

DOC = (Path(__file__).parent.parent / "subjects.md").read_text()


def table(heading: str) -> list[list[str]]:
    section = DOC.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            rows.append(cells)
    return rows[1:]  # drop the header row


def ticked(cell: str) -> str:
    match = re.fullmatch(r"`([^`]+)`", cell)
    assert match, f"expected one `code` cell, got {cell!r}"
    return match.group(1).replace("\\|", "|")


def test_every_subject_is_documented_and_every_documented_subject_exists() -> None:
    documented = {ticked(row[0]) for row in table("Subjects")}
    assert documented == set(subjects.SUBJECT_PATTERNS)


def test_headers_agree() -> None:
    documented = {ticked(row[0]) for row in table("Headers")}
    assert documented == set(subjects.HEADERS)


def test_error_codes_agree() -> None:
    documented = {ticked(row[0]): (int(row[1]), ticked(row[2])) for row in table("Error codes")}
    in_code = {code: (cls.status, cls.__name__) for code, cls in errors.ERRORS_BY_CODE.items()}
    assert documented == in_code


def test_http_error_codes_agree_and_stay_off_the_wire() -> None:
    from services.http.errors import HTTP_ERRORS

    documented = {ticked(row[0]): (int(row[1]), ticked(row[2])) for row in table("HTTP error codes")}
    assert documented == {cls.code: (cls.status, cls.__name__) for cls in HTTP_ERRORS}
    assert all(issubclass(cls, errors.MeshError) for cls in HTTP_ERRORS)
    assert not set(documented) & set(errors.ERRORS_BY_CODE)


def test_buckets_agree() -> None:
    documented = {ticked(row[0]) for row in table("Buckets")}
    assert documented == {
        subjects.STATE_BUCKET,
        subjects.DIRECTORY_BUCKET,
        subjects.WORKERS_BUCKET,
        subjects.IDEMPOTENCY_BUCKET,
        subjects.HTTP_RUNS_BUCKET,
        subjects.EVENTS_STREAM,
        subjects.DURABLE_STREAM,
        subjects.DEAD_STREAM,
        subjects.MAIL_INBOUND_STREAM,
        subjects.MAIL_OUTBOX_STREAM,
        subjects.MAIL_BUCKET,
        subjects.MAIL_OBJECTS,
        subjects.MEMORY_STREAM,
        subjects.RUNS_BUCKET,
        subjects.CONNECTIONS_BUCKET,
    }


def test_bench_names_are_documented_apart_from_the_mesh() -> None:
    from services.bench import names

    documented = {ticked(row[0]) for row in table("Bench names") if row[0].startswith("`")}
    assert documented == set(names.SUBJECT_PATTERNS) | set(names.BUCKETS)
    assert not any("bench" in pattern for pattern in subjects.SUBJECT_PATTERNS)


def test_recorder_event_kinds_agree() -> None:
    from mesh.recorder import RECORDER_KINDS

    assert tuple(ticked(row[0]) for row in table("Flight-recorder events")) == RECORDER_KINDS


def test_name_examples_in_the_doc_are_true() -> None:
    for name, token in re.findall(r"`([^`]+)` → `([^`]+)`", DOC):
        assert subjects.encode_name(name) == token


def test_public_api_is_sorted_and_importable() -> None:
    assert mesh.__all__ == sorted(mesh.__all__)
    for symbol in mesh.__all__:
        assert hasattr(mesh, symbol), symbol
