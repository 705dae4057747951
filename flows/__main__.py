import sys

try:
    from flows.cli import main
except KeyboardInterrupt:  # Ctrl-C while the command's modules import: nothing has started yet
    print("interrupted", file=sys.stderr)
    exec("")  # noqa: S102 - see flows.interrupts.forget_exec_interrupt (not importable yet here)
    sys.exit(130)

sys.exit(main())
