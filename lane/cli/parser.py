"""The argument parser every ``lane`` command uses: one-line usage errors and lazily imported subcommands.

Why a parser class of our own: argparse prints the whole usage block before its error (six lines
for ``lane gateway``) and a traceback-free CLI should answer bad input with one line a script can
grep, ``lane gateway: error: argument --listen: expected HOST:PORT, got 'x' (see lane gateway
--help)``, exit status 2. And the ``lane`` and ``lane mesh`` command tables import a command's
module only when that command runs, so ``lane mesh render`` never pays for the data plane and
nothing imports locust; both tables use `add_lazy_commands` here instead of a dispatcher each.

A command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; the parser of the
chosen command stores that ``run`` as ``args.run_command`` (the innermost command wins).
The value types several commands share are `lane.process.options`'.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

from lane.core.errors import LaneError

__all__ = [
    "LazyParser",
    "OneLineParser",
    "add_lazy_commands",
    "add_subcommands",
    "parse_command_line",
]

Importer = Callable[[str], Any]
if TYPE_CHECKING:  # not subscriptable at run time
    Subcommands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]  # what add_subparsers returns


class OneLineParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose usage errors are one line (``PROG: error: MESSAGE``) and exit 2.

    Subparsers are of the parser's own class (argparse's default), so a whole command tree answers
    the same way. `add_shared_options` runs for every parser of the tree: a subclass adds there the
    options accepted both before and after a subcommand's name.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_shared_options()

    def add_shared_options(self) -> None:
        """Options every parser of the tree takes (none here)."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


class LazyParser(OneLineParser):
    """A subcommand parser whose arguments come from a module imported only once it is chosen.

    argparse hands the subcommand's arguments to the chosen subparser's `parse_known_args`, so that
    is where the module is imported, its ``add_arguments`` called and its ``run`` recorded.
    """

    lazy_module: str | None = None
    lazy_importer: Importer = staticmethod(importlib.import_module)

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        if self.lazy_module is not None:
            name, self.lazy_module = self.lazy_module, None
            try:
                module = self.lazy_importer(name)
            except LaneError as exc:  # e.g. an optional package that is not installed
                self.error(str(exc))
            module.add_arguments(self)
            self.set_defaults(run_command=module.run)
        self.set_defaults(command_parser=self)  # the innermost chosen parser names unknown arguments
        return super().parse_known_args(args, namespace)


def _present(module: str) -> bool:
    """Whether *module* can be imported, without importing anything not yet imported."""
    top = module.partition(".")[0]
    if top in sys.modules:
        return importlib.util.find_spec(module) is not None
    return importlib.util.find_spec(top) is not None  # finding a submodule would import its package


def add_subcommands(parser: argparse.ArgumentParser, dest: str, metavar: str) -> Subcommands:
    """The (required) subcommands of *parser*; their parsers are `LazyParser`s of the tree's class."""
    return parser.add_subparsers(dest=dest, metavar=metavar, required=True, parser_class=_lazy_class(parser))


def add_lazy_commands(sub: Subcommands, commands: Mapping[str, tuple[str, str]], *,
                      importer: Importer | None = None) -> None:
    """Add ``{name: (module, one-line help)}`` to *sub*, each module imported only when its command is
    chosen; a command whose module (or top-level package) is not installed is left out. *importer*
    imports a module (default: `importlib.import_module`); it may raise `LaneError` to refuse with one
    line."""
    for name, (module, help_text) in commands.items():
        if _present(module):
            child = sub.add_parser(name, help=help_text, description=help_text)
            assert isinstance(child, LazyParser)
            child.lazy_module = module
            if importer is not None:
                child.lazy_importer = importer


def _lazy_class(parser: argparse.ArgumentParser) -> type[LazyParser]:
    """The parser's own class if it is lazy (keeping its shared options), else `LazyParser`."""
    return type(parser) if isinstance(parser, LazyParser) else LazyParser


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse *argv*; an unknown argument is refused by the innermost chosen command's parser (so the
    error names ``lane mesh render``, not ``lane``)."""
    args, unknown = parser.parse_known_args(list(argv))
    if unknown:
        owner = getattr(args, "command_parser", parser)
        owner.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args
