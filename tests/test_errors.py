"""The exit-code policy prints every user error on one line, however many lines its message has."""

from __future__ import annotations

import pytest

from mm_lightning.errors import ConfigError, one_line, run_command


def test_one_line_joins_a_message_after_colons_and_between_statements() -> None:
    assert one_line("plain") == "plain"
    assert (
        one_line('Parser key "a":\n  Expected an int.\n  Got value: x\n')
        == 'Parser key "a": Expected an int.; Got value: x'
    )
    assert one_line("\n\n") == ""


def test_run_command_prints_a_multi_line_message_on_one_line(capsys: pytest.CaptureFixture) -> None:
    def command() -> None:
        raise ConfigError("key b:\n  Errors:\n    - first\n    - second")

    assert run_command("x", command) == 2
    assert capsys.readouterr().err == "x: error: key b: Errors: - first; - second\n"
