"""Done when 6: real-world-shaped MIME messages each get a 250 and a parsed request, or a clear 5xx."""

from __future__ import annotations

from pathlib import Path

import pytest
from mail_support import Inbox, send

from mesh.testing import eventually
from services.mail.parse import Unparseable, parse_message

CORPUS = Path(__file__).parent / "mail_corpus"

# file -> (expected SMTP code, subject, a piece of the agent's text, attachments)
EXPECTED: dict[str, tuple[int, str | None, str | None, int]] = {
    "01_plain_qp_utf8.eml": (250, "Café order", "two cafés crème, please. This line is long enough", 0),
    "02_multipart_alternative.eml": (250, "Meeting notes", "Plain part wins", 0),
    "03_html_only_base64.eml": (250, "Quarterly update", "Revenue grew by 12 % & costs fell.\n\n- First point", 0),
    "04_latin1_qp.eml": (250, "Présentation à Zürich", "la présentation à Zürich est prête", 0),
    "05_wrong_charset_8bit.eml": (250, "Windows text labelled as UTF-8", "Price: 20€ – “quoted” naïve", 0),
    "06_unknown_charset.eml": (250, "Unknown charset", "Plain ASCII text in a part", 0),
    "07_encoded_headers_cjk.eml": (250, "こんにちは", "会議は明日です", 0),
    "08_attachment.eml": (250, "Invoice attached", "Please find the invoice attached.", 2),
    "09_malformed_headers.eml": (250, "Malformed headers but readable body", "Body survives malformed headers.", 0),
    "10_outlook_reply.eml": (250, "RE: Budget", "Yes, the budget is approved.", 0),
    "11_gmail_reply.eml": (250, "Re: Trip", "Friday works for me.", 0),
    "12_broken_base64.eml": (250, "Truncated base64", "Truncated base64 still gives text", 0),
    "13_forwarded_rfc822.eml": (250, "Fwd: Original", "See the forwarded message.", 0),
    "14_multipart_no_boundary.eml": (250, "Multipart without boundary", "sent as multipart without a boundary", 0),
    "15_gb2312_bare_lf.eml": (250, "你好", "你好，明天见。", 0),
    "16_no_headers_reject.eml": (554, None, None, 0),
}


def test_the_corpus_is_complete() -> None:
    assert sorted(p.name for p in CORPUS.glob("*.eml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_message_parses_or_is_clearly_refused(name: str) -> None:
    code, subject, text, attachments = EXPECTED[name]
    raw = (CORPUS / name).read_bytes()
    if code != 250:
        with pytest.raises(Unparseable):
            parse_message(raw, mail_id="m", sender="s@example.com", recipients=["inbox+corpus@localhost"])
        return
    mail = parse_message(raw, mail_id="m", sender="s@example.com", recipients=["inbox+corpus@localhost"])
    assert mail.subject == subject
    assert text is not None and text in mail.text
    assert len(mail.attachments) == attachments
    assert ">" not in mail.text and "wrote:" not in mail.text and "Shall I approve" not in mail.text


def test_headers_in_raw_8bit_or_encoded_words_are_decoded() -> None:
    def parsed(name: str):  # type: ignore[no-untyped-def]
        return parse_message((CORPUS / name).read_bytes(), mail_id="m", sender="s@x.test", recipients=["r@localhost"])

    assert parsed("04_latin1_qp.eml").from_name == "José"  # raw ISO-8859-1 bytes in From
    assert parsed("01_plain_qp_utf8.eml").from_name == "Ana María"
    assert parsed("07_encoded_headers_cjk.eml").from_name == "山田太郎"
    assert parsed("10_outlook_reply.eml").references == ["root.budget@example.com", "first.budget@localhost"]


async def test_the_corpus_through_smtp_while_the_server_keeps_serving(mesh_factory, mesh_client, mail_factory):
    await mesh_factory([Inbox])
    service = await mail_factory()
    for name in sorted(EXPECTED):
        code, reply = await send(
            service.port, (CORPUS / name).read_bytes(), sender="corpus@example.com", rcpts=["inbox+corpus@localhost"]
        )
        assert code == EXPECTED[name][0], (name, code, reply)
        if code != 250:
            assert reply.startswith(b"5.6.0"), reply
    expected = [v for v in EXPECTED.values() if v[0] == 250]

    async def all_delivered() -> dict:
        state = await mesh_client.state("inbox", "corpus")
        assert state is not None and len(state["mails"]) == len(expected), state and len(state["mails"])
        return state

    state = await eventually(all_delivered, timeout=30)
    by_subject = {m["subject"]: m for m in state["mails"]}
    for _, subject, text, attachments in expected:
        assert subject in by_subject
        assert text in by_subject[subject]["text"]
        assert len(by_subject[subject]["attachments"]) == attachments
    assert by_subject["Windows text labelled as UTF-8"]["defects"]  # the parser says what it worked around
    assert service.handler.accepted == len(expected)
