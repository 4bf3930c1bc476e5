"""Getting a model's bytes: sources (a directory mirror, an HTTP(S) URL) and the transfer engine."""
