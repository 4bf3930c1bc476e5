"""``python -m whisperctl``."""

from whisperctl.cli import main

if __name__ == "__main__":
    main()
