"""HTTP for the engine: the client (TLS, proxies) and the lean HTTP/1.1 body path."""
