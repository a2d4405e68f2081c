"""The one exception type users see: its message is a single line naming the problem and the fix."""


class CertquantError(ValueError):
    """Bad input or a missing resource. The CLI prints ``error: <message>`` and exits with status 2."""


def short_reason(exc: BaseException, limit: int = 100) -> str:
    """The first line of an exception's message, at most ``limit`` characters, cut at a word boundary (``...``
    marks a cut), so a quoted library error never ends mid-word. The exception's type name when it has no message."""
    text = str(exc).strip()
    first = text.splitlines()[0].strip() if text else ""
    if not first:
        return type(exc).__name__
    if len(first) <= limit:
        return first
    cut = first[:limit].rsplit(" ", 1)[0].rstrip(" ,.;:-(")
    return f"{cut} ..."
