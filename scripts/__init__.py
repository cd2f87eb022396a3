"""The `vqrae` command line (`vqrae.cli` once installed). Each subcommand lives in its own module and only parses
arguments and calls the library; `main` dispatches."""


class CLIError(ValueError):
    """Raised by a subcommand for a bad argument; `vqrae` prints it as one line and exits 2."""


def main(argv: list[str] | None = None) -> int:
    """The `vqrae` console script (see `vqrae.cli.cli`)."""
    from .cli import main as _main

    return _main(argv)
