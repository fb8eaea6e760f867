"""``python -m bidspack``: the same as the ``bidspack`` console script."""

from bidspack.cli.main import main

if __name__ == "__main__":
    main()
