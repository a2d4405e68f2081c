"""Assertions shared by the CLI tests (importable because tests/cli is on sys.path under pytest's prepend mode)."""


def assert_one_line_error(result, *fragments: str) -> None:
    """The command failed with exit status 2 and printed exactly one line, ``error: ...``, containing ``fragments``."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
