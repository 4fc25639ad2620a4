"""The exit codes of every ``vipwire`` command, and the errors that map onto them.

=====  ==========================================================================
code   meaning
=====  ==========================================================================
0      done
1      the operation failed (a Service unknown, a check failed, a divergence)
2      usage or configuration error: a flag, a file, a permission to fix
3      could not reach NATS or the Kubernetes API server
=====  ==========================================================================

A command raises :class:`UsageError`, :class:`OperationFailed` or
:class:`Unreachable` (or returns the code); :func:`vipwire.cli.main.main` prints the
message on one line, ``vipwire <command>: <message>``, never a traceback.
"""

from __future__ import annotations

OK = 0
FAILED = 1
USAGE = 2
UNREACHABLE = 3


class CliError(Exception):
    """A user-facing error: its message is printed on one line; ``code`` is the exit code."""

    code = FAILED


class OperationFailed(CliError):
    """The command ran but what it was asked could not be done."""

    code = FAILED


class UsageError(CliError):
    """A flag, a file or a permission the user must fix."""

    code = USAGE


class Unreachable(CliError):
    """NATS or the Kubernetes API server could not be reached."""

    code = UNREACHABLE
