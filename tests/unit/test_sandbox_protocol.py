"""The bind contract between the node daemon and a pooled listener (protocol/sandbox.py)."""

from __future__ import annotations

import pytest

from protocol.errors import MessageError
from protocol.sandbox import MAX_LINE, answer_line, bind_line, parse_answer, parse_bind


def test_a_bind_round_trips_as_one_line():
    line = bind_line({"DIT4C_INSTANCE_ID": "abc", "DIT4C_TUNNEL_TOKEN": "t\nx"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_bind(line) == {"DIT4C_INSTANCE_ID": "abc", "DIT4C_TUNNEL_TOKEN": "t\nx"}


@pytest.mark.parametrize("line", [
    b"not json", b"[]", b'{"bind": []}', b'{"bind": {"A": 1}}', b'{"other": {}}',
    b'{"bind": {"A": "' + b"x" * MAX_LINE + b'"}}',
])
def test_anything_else_is_refused(line: bytes):
    with pytest.raises(MessageError):
        parse_bind(line)


def test_answers_are_read_back_and_stray_output_is_ignored():
    assert parse_answer(answer_line("bound", "abc")) == ("bound", "abc")
    assert parse_answer(answer_line("ready", "abc")) == ("ready", "abc")
    assert parse_answer(answer_line("error", "no")) == ("error", "no")
    for stray in (b"2026-12-06 INFO something", b'{"ready": 1}', b'{"other": "x"}',
                  b'{"ready": "a", "bound": "a"}'):
        assert parse_answer(stray) is None
    with pytest.raises(ValueError):
        answer_line("done", "abc")
