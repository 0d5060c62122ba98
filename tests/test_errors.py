"""UserError (tinyllm.errors), the one exception that means bad input. The code catches library failures by
their built-in types (ValueError, OSError, RuntimeError, KeyError, ...) and turns them into UserErrors with a
message; a UserError must never be one of those, or such a handler would swallow it and replace its message."""

import pytest

from tinyllm.errors import OneLineParser, UserError


@pytest.mark.parametrize("builtin", [ValueError, TypeError, OSError, RuntimeError, KeyError, LookupError,
                                     EOFError, ImportError, UnicodeError])
def test_user_error_is_none_of_the_builtin_failures(builtin):
    assert not issubclass(UserError, builtin)
    assert issubclass(UserError, Exception) and not issubclass(UserError, (SystemExit, KeyboardInterrupt))


def test_the_message_is_the_text_printed():
    assert str(UserError("--lr must be greater than 0")) == "--lr must be greater than 0"


def test_one_line_parser_errors_name_the_help_command(capsys):
    for kwargs, hint in (({"prog": "tinyllm-x"}, "(see tinyllm-x --help)"),
                         ({"prog": "x.py", "help_command": "python x.py"}, "(see python x.py --help)")):
        p = OneLineParser(**kwargs)
        p.add_argument("--n", type=int)
        with pytest.raises(SystemExit) as e:
            p.parse_args(["--n", "two"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err == f"error: argument --n: invalid int value: 'two' {hint}\n"
