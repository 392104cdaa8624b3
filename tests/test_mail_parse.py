"""Parsing details: HTML to text, quoted replies, loop-safety verdicts, authentication results, routing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mail_support import compose

from mesh.mail import SenderAuth
from services.mail.html import html_to_text
from services.mail.parse import MAX_PARTS, Unparseable, accept_check, auth_verdict, parse_message, strip_quoted
from services.mail.routing import Route, address_resolver, agent_address, sign_token, verify_token


def parse(message, sender: str = "alice@example.com"):  # type: ignore[no-untyped-def]
    return parse_message(message.as_bytes(), mail_id="m", sender=sender, recipients=["notes+a@localhost"])


def test_html_to_text_keeps_structure_and_drops_scripts() -> None:
    html = (
        "<html><head><style>x{}</style><script>evil()</script></head><body><p>One&nbsp;&amp;&lt;two&gt;</p>"
        "<ul><li>a</li><li>b</li></ul><a href='https://x.test/p'>link</a><br/>end<table><tr><td>c1</td>"
        "<td>c2</td></tr></table><blockquote>old</blockquote></body></html>"
    )
    assert html_to_text(html) == "One &<two>\n\n- a\n- b\nlink (https://x.test/p)\nend\n\nc1 c2\n\n> old"
    assert html_to_text("<p>unclosed <b>bold <i>mess</p></div></span>") == "unclosed bold mess"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("New answer.\n\nOn Mon, 1 Jan 2026 at 10:00, Bob <b@x> wrote:\n> old\n> older", "New answer."),
        ("Top.\n> quoted line\nBottom.", "Top.\nBottom."),
        ("Reply\n\n-----Original Message-----\nFrom: x\nold", "Reply"),
        ("Reply\n\nLe lun. 1 janv. 2026, Bob a écrit :\n> vieux", "Reply"),
        ("Thanks\n-- \nAlice, Example Corp", "Thanks"),
        ("> only quoted text", "> only quoted text"),  # nothing new: keep it rather than send nothing
    ],
)
def test_quoted_replies_are_stripped(text: str, expected: str) -> None:
    assert strip_quoted(text) == expected


@pytest.mark.parametrize(
    "headers,sender,reason",
    [
        ({"Auto-Submitted": "auto-generated"}, "a@x.test", "auto-submitted: auto-generated"),
        ({"Auto-Submitted": "no"}, "a@x.test", None),
        ({"Precedence": "bulk"}, "a@x.test", "precedence: bulk"),
        ({"Precedence": "junk"}, "a@x.test", "precedence: junk"),
        ({"List-Unsubscribe": "<mailto:u@x.test>"}, "a@x.test", "mailing list (List-Unsubscribe)"),
        ({"X-Auto-Response-Suppress": "OOF, DR"}, "a@x.test", "x-auto-response-suppress: oof, dr"),
        ({}, "", "null sender"),
        ({}, "MAILER-DAEMON@x.test", "system sender (mailer-daemon)"),
        ({}, "postmaster@x.test", "system sender (postmaster)"),
        ({}, "a@x.test", None),
    ],
)
def test_automatic_mail_is_recognised(headers: dict[str, str], sender: str, reason: str | None) -> None:
    mail = parse(compose(headers=headers), sender=sender)
    assert mail.automatic_reason == reason
    assert mail.automatic is (reason is not None)


def test_authentication_results_only_from_trusted_servers() -> None:
    forged = "evil.test; dmarc=pass"
    trusted = "mx.mesh.test; spf=pass smtp.mailfrom=x.test; dkim=fail header.d=x.test; dmarc=fail"
    assert auth_verdict([forged], ("mx.mesh.test",)) == SenderAuth()
    verdict = auth_verdict([trusted, forged], ("mx.mesh.test",))
    assert (verdict.verdict, verdict.spf, verdict.dkim, verdict.dmarc) == ("fail", "pass", "fail", "fail")
    assert auth_verdict(["mx.mesh.test; spf=pass"], ("mx.mesh.test",)).verdict == "pass"
    assert auth_verdict(["mx.mesh.test; none"], ("mx.mesh.test",)).verdict == "none"


def test_thread_ids_are_parsed() -> None:
    mail = parse(
        compose(message_id="<m2@x.test>", headers={"In-Reply-To": "<m1@x.test>", "References": "<m0@x.test> <m1@x.test>"})
    )
    assert (mail.message_id, mail.in_reply_to, mail.references) == ("m2@x.test", "m1@x.test", ["m0@x.test", "m1@x.test"])


def test_addresses_route_to_instances() -> None:
    resolve = address_resolver(("localhost", "mesh.test"))
    assert resolve("triage+alice@localhost") == Route("triage", "alice")
    assert resolve("<Triage+Alice@MESH.test>") == Route("triage", "Alice")
    assert resolve("triage@localhost") == Route("triage", None)
    assert resolve("triage+bob=40example=2Ecom@localhost") == Route("triage", "bob@example.com")
    assert resolve("triage+a.b@localhost") == Route("triage", "a.b")  # not canonical: taken as written
    assert resolve("triage+alice+tap_1-abc@localhost") == Route("triage", "alice", "tap_1-abc")
    assert resolve("triage+alice@elsewhere.test") is None
    assert resolve("Bad Type@localhost") is None
    assert resolve("no-at-sign") is None
    assert Route("triage", None).instance_for("Bob@Example.com") == "bob@example.com"
    address = agent_address("triage", "bob@example.com", "localhost")
    assert address == "triage+bob=40example=2Ecom@localhost"
    assert resolve(address) == Route("triage", "bob@example.com")


def test_signed_tokens_verify_only_for_their_instance() -> None:
    token = sign_token(b"k", "clerk", "desk", "ap_123")
    assert verify_token(b"k", "clerk", "desk", token) == "ap_123"
    assert verify_token(b"k", "clerk", "other", token) is None
    assert verify_token(b"other-key", "clerk", "desk", token) is None
    assert verify_token(None, "clerk", "desk", token) is None
    assert verify_token(b"k", "clerk", "desk", token[:-1] + ("0" if token[-1] != "0" else "1")) is None
    assert verify_token(b"k", "clerk", "desk", "tap_123") is None
    resolve = address_resolver(("localhost",))
    assert resolve(agent_address("clerk", "desk", "localhost", token)) == Route("clerk", "desk", token)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=2000)
    | st.builds(
        lambda head, body: head + b"\n\n" + body,
        st.sampled_from(
            [
                b"Content-Type: multipart/mixed; boundary=x",
                b"Content-Type: text/plain; charset=x-nope",
                b"Content-Transfer-Encoding: base64\nContent-Type: text/html",
                b"From: <<@>>\nSubject: =?x?q?=ff?=",
                b"Content-Type: message/rfc822",
                b'Content-Type: multipart/alternative; boundary=""',
            ]
        ),
        st.binary(max_size=1500),
    )
)
def test_any_bytes_parse_or_are_refused_cleanly(raw: bytes) -> None:
    try:
        accepted_id = accept_check(raw)
    except Unparseable:
        accepted_id = "refused"
    try:
        mail = parse_message(raw, mail_id="m", sender="s@x.test", recipients=["notes+a@localhost"])
    except Unparseable:
        assert accepted_id == "refused"  # refused during the SMTP session, never accepted then dropped
        return
    assert accepted_id != "refused"
    assert isinstance(mail.text, str)
    mail.model_dump_json()  # what goes on the wire always serializes


def test_acceptance_refuses_what_processing_would_and_reads_the_same_message_id() -> None:
    many = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(MAX_PARTS + 5))
    head = b"From: a@x.test\r\nMessage-ID: <many@x.test>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    raw = head + many + b"--b--\r\n"
    with pytest.raises(Unparseable, match="MIME parts"):
        parse_message(raw, mail_id="m", sender="", recipients=[])
    with pytest.raises(Unparseable, match="MIME parts"):
        accept_check(raw)
    for path in sorted((Path(__file__).parent / "mail_corpus").glob("*.eml")):
        data = path.read_bytes()
        try:
            expected = parse_message(data, mail_id="m", sender="", recipients=[]).message_id
        except Unparseable:
            with pytest.raises(Unparseable):
                accept_check(data)
            continue
        assert accept_check(data) == expected, path.name
