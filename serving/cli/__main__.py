"""``python -m serving.cli``: the ``recstream`` command line, as the tests and the demo start it."""

from serving.cli import main

if __name__ == "__main__":
    main()
