"""``python -m hybrid``: service mode's command line, the same as the ``hybrid`` command (see `hybrid.service`)."""

from hybrid.service._cli import main

if __name__ == "__main__":
    main()
