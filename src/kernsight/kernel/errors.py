"""Errors from the kernel layer. Each says what failed and how to fix it."""


class KernelError(RuntimeError):
    """Something the kernel or the toolchain refused. `fix` tells the user what to do."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message + (f"\n  fix: {fix}" if fix else ""))
        self.message = message
        self.fix = fix


class PrivilegeError(KernelError):
    pass


class BuildError(KernelError):
    pass


class LoadError(KernelError):
    """A BPF object failed to load; `log` holds the relevant verifier / libbpf lines."""

    def __init__(self, message: str, log: str = "", fix: str = "") -> None:
        super().__init__(message + (f"\n{log}" if log else ""), fix)
        self.log = log


class AttachError(KernelError):
    pass


class TracefsError(KernelError):
    pass
