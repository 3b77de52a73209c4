"""What every command module shares: the exit statuses."""

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: `beastnet load`: nothing at all came back from the target.
EXIT_UNREACHABLE = 3
