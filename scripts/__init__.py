"""The `vqrae` command line. Each subcommand lives in its own module and only parses arguments and calls the library."""


class CLIError(ValueError):
    """Raised by a subcommand for a bad argument; `vqrae` prints it as one line and exits 2."""
