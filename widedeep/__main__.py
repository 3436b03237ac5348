"""``python -m widedeep ...`` is the same as the ``widedeep`` console script."""

from widedeep.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
