"""The one base class of the verifier's errors, so a command line catches one type."""


class VerifierError(Exception):
    """Input, a file, the network or the command line is unusable: exit code 2 with one line,
    never a verdict (the checks themselves fail steps, they do not raise)."""
