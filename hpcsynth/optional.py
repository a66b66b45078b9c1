"""The optional libraries: a missing one is one line with the pip command that installs it, not a traceback.

Ground floor (imports only errors.py). The core install plans, launches and reports on a login node; the
heavy libraries come with the extras of pyproject.toml (cpu: torch, transformers, tokenizers, gigatoken;
vllm; charts: matplotlib). Every lazy import of one is preceded by `require`, which the CLI then shows as
`hpcsynth: error: tokenizers is not installed (needed for ...); install it with: pip install 'hpcsynth[cpu]'`
with exit code 2, whichever command reached it.
"""

from __future__ import annotations

from hpcsynth.errors import MissingDependency


def require(*modules: str, extra: str, for_what: str) -> None:
    """Import each module, or raise MissingDependency naming it, what needs it and the extra to install.

    A module that is there but fails to import (a broken build, a library of its own missing) is named
    as such, with the first line of the import error: "not installed" would send the user to reinstall
    something pip already reports as present.
    """
    fix = f"pip install 'hpcsynth[{extra}]'"
    for module in modules:
        try:
            __import__(module)  # through builtins.__import__, as the import statement that follows goes
        except ImportError as exc:
            top = module.split(".")[0]
            if isinstance(exc, ModuleNotFoundError) and exc.name == top:
                raise MissingDependency(f"{top} is not installed (needed for {for_what}); "
                                        f"install it with: {fix}") from None
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise MissingDependency(f"{top} is installed but does not import ({type(exc).__name__}: {first}; "
                                    f"needed for {for_what}); reinstall it with: {fix}") from None
