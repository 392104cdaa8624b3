"""Names -> subject tokens and KV keys: injective, reversible, one token, canonical only."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh import subjects
from mesh.errors import NameInvalid

TOKEN = re.compile(r"^[A-Za-z0-9_=-]+$")  # one subject token, and inside the KV key alphabet
HOSTILE = ["a.b", "*", ">", "a b", "ünï", "x" * 256, "a>b.*", "$SYS", "=", "=41", "a\tb", "a\nb", "🙂", "A", "a"]

names = st.text(min_size=1, max_size=subjects.MAX_NAME_LENGTH).filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s))


@given(names)
@settings(max_examples=500)
def test_encoding_is_reversible_and_one_token(name: str) -> None:
    token = subjects.encode_name(name)
    assert TOKEN.match(token)
    assert subjects.decode_name(token) == name


@given(names, names)
def test_encoding_is_injective(a: str, b: str) -> None:
    if a != b:
        assert subjects.encode_name(a) != subjects.encode_name(b)


def test_hostile_names_stay_inside_their_token() -> None:
    tokens = {subjects.encode_name(n) for n in HOSTILE}
    assert len(tokens) == len(HOSTILE)
    for name in HOSTILE:
        subject = subjects.agent_subject("counter", name)
        assert subject.count(".") == 2 and "*" not in subject and ">" not in subject and " " not in subject


@pytest.mark.parametrize("name", ["", "x" * 257, "\ud800"])
def test_unaddressable_names_are_rejected(name: str) -> None:
    with pytest.raises(NameInvalid):
        subjects.encode_name(name)


@pytest.mark.parametrize("token", ["=61", "=2e", "a.b", "*", ">", "", "=4", "=ZZ", "=C3", "a b"])
def test_non_canonical_tokens_are_rejected(token: str) -> None:
    with pytest.raises(NameInvalid):
        subjects.decode_name(token)


@pytest.mark.parametrize("agent_type", ["", "Counter", "1x", "a.b", "a*", "x" * 65, "a b"])
def test_bad_type_names_are_rejected(agent_type: str) -> None:
    with pytest.raises(NameInvalid):
        subjects.agent_subject(agent_type, "n")


def test_cli_address_keeps_slashes_in_the_name() -> None:
    assert subjects.parse_address("counter/a/b") == ("counter", "a/b")
    with pytest.raises(NameInvalid):
        subjects.parse_address("counter")
    with pytest.raises(NameInvalid):
        subjects.parse_address("counter/")
