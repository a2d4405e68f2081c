"""The one exception type users see: its message is a single line naming the problem and the fix."""


class CertquantError(ValueError):
    """Bad input or a missing resource. The CLI prints ``error: <message>`` and exits with status 2."""
