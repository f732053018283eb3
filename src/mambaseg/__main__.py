"""``python -m mambaseg`` = the ``mambaseg`` command."""

from mambaseg.cli import main

if __name__ == "__main__":
    main()
