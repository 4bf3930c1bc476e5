"""``python -m whisperctl``."""

from whisperctl.cli.app import main

if __name__ == "__main__":
    main()
