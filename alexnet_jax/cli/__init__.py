"""The command line, one module per mode: its own flags (``define_flags``), and ``run(args)``,
which does what the mode does and returns the exit code. ``parsing`` reads the command line."""

EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_FAULT, EXIT_STOPPED = 2, 3, 4, 130
