"""Path arithmetic shared by the daemon and the command line (no heavy imports: the CLI uses it)."""


def under(path: str, top: str) -> bool:
    """path is top or below it ('/a/b' is under '/a', '/ab' is not; everything is under '/')."""
    return path == top or path.startswith(top.rstrip("/") + "/")
