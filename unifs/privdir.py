"""Private directories for data only the daemon may touch (cache blocks, staged uploads)."""

from __future__ import annotations

import errno
import os
import stat


def private_directory(path: str, what: str) -> None:
    """Create `path` as 0700, or tighten it to 0700. Refuse a symbolic link, a directory owned
    by someone else, and one inside a directory other users could swap it in: a root daemon
    followed a link another user had put there, made its target 0700 and wrote into it, and a
    directory of theirs would feed readers their blocks."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.lexists(parent) and not os.path.isdir(parent):
        raise NotADirectoryError(errno.ENOTDIR, f"{parent} is not a directory", path)
    # every directory above it, as written and as the kernel walks it (links resolved), before
    # any is made: whoever may rename one (/tmp/ww in /tmp/ww/staging/...) or a link on the
    # way can swap in a tree of their own. Sticky ones (/tmp) let nobody else rename what is
    # ours; above its own directory group-writable ones are trusted (/var/local is 2775
    # root:staff: the group is whoever set it so)
    existing = parent
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    me = os.geteuid()
    for chain in (existing, os.path.realpath(existing)):
        above = chain
        while True:
            pst = os.stat(above)
            writable = 0o022 if above == parent else 0o002
            if pst.st_uid not in (0, me) or (pst.st_mode & writable and not pst.st_mode & stat.S_ISVTX):
                raise PermissionError(errno.EPERM, f"{what} is inside {above}, which other users can change "
                                      f"(owner uid {pst.st_uid}, mode {stat.S_IMODE(pst.st_mode):o}): use "
                                      "a directory only you (or root) can write to", path)
            up = os.path.dirname(above)
            if up == above:
                break
            above = up
    os.makedirs(parent, mode=0o700, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise PermissionError(errno.EPERM, f"{what} is not a plain directory (a symbolic link?)", path)
    if st.st_uid != me:
        raise PermissionError(errno.EPERM, f"{what} is owned by uid {st.st_uid}", path)
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700, follow_symlinks=False)
