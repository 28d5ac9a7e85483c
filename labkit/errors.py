"""The errors labkit raises.

Every message has two parts: what went wrong, and what to do next. A learner who
reads only the last line of a traceback should know how to go on.
"""
from __future__ import annotations


class LabError(Exception):
    """Base class: ``LabError(problem, fix)`` prints as "problem. fix"."""

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        self.message = f"{problem.rstrip('.')}. {fix}".strip() if fix else problem
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        """Pickle by state, so an error raised in a sandbox child reaches the parent intact."""
        state = dict(self.__dict__)
        if isinstance(self, OSError):
            state["errno"], state["strerror"] = self.errno, self.strerror
        return (_rebuild, (type(self), self.args, state))


class KernelError(LabError, OSError):
    """A system call failed; keeps the errno so callers can test for EXDEV, EBUSY ..."""

    def __init__(self, call: str, errno_: int, path: str = "", cause: str = "", fix: str = "",
                 kernel_log: str = ""):
        import os
        self.call, self.path, self.kernel_log = call, path, kernel_log
        where = f" on {path}" if path else ""
        problem = f"{call}{where} failed: {os.strerror(errno_)} ({_errname(errno_)})"
        if kernel_log:
            problem += f"; the kernel said: {kernel_log}"
        if cause:
            problem += f". Likely cause: {cause}"
        LabError.__init__(self, problem, fix)
        self.errno = errno_
        self.strerror = os.strerror(errno_)


class OutsideLabRoot(LabError):
    """labkit only mounts on, writes to and deletes paths under its lab root."""


class LessonBusy(LabError):
    """Another live kernel runs the same lesson, and the lesson's names are shared (lab.scratch)."""


class SandboxError(LabError):
    """The child process died or raised something that could not be sent back."""


def _errname(errno_: int) -> str:
    import errno
    return errno.errorcode.get(errno_, str(errno_))


def _rebuild(cls, args, state):
    e = cls.__new__(cls)
    Exception.__init__(e, *args)
    for k, v in state.items():
        setattr(e, k, v)
    return e
