"""The command line, one module per mode: ``run(args)``, which does what the mode does and returns
the exit code, and the mode's own flags where it has any (``define_flags``). ``parsing`` reads the
command line and defines the flags several modes share."""

EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_FAULT, EXIT_STOPPED = 2, 3, 4, 130
