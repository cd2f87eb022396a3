"""The `vqrae` command line. Each subcommand lives in its own module and only parses arguments and calls the library."""
