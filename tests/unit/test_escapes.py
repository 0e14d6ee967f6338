"""Terminal escape codes never leave the machine: IPython colours its tracebacks, nbconvert puts
them in CellExecutionError's message, loggers colour their lines."""

from __future__ import annotations

import corp_error_agent as agent


def test_scrub_strips_terminal_escapes_and_keeps_the_lines():
    agent._load()
    coloured = "\x1b[31mValueError\x1b[39m: bad\n\x1b]8;;http://example\x07link\x1b]8;;\x07\x1b[0m\tend\n"
    assert agent.scrub(coloured) == "ValueError: bad\nlink\tend\n"


def test_signature_and_trace_of_a_coloured_message_carry_no_escapes():
    agent._load()
    try:
        raise RuntimeError("\x1b[1;31mdisk full\x1b[0m")
    except RuntimeError as error:
        signature = agent.error_signature(type(error), error, error.__traceback__)
        trace = agent.format_trace(type(error), error, error.__traceback__)
    assert signature.startswith("RuntimeError: disk full @ ")
    assert "\x1b" not in trace and trace.endswith("RuntimeError: disk full\n")
