"""Delivery into mailboxes and maildirs: the ``deliver:`` and ``copy:`` filters and
``emailrelay-submit --copy``.

What it is for: copying a message a filter was given (or one just submitted) into ``base/<name>``
for each mailbox name, and deleting the original when asked.  The spool names, opens, writes and
renames are :class:`~emailrelay.spool.store.SpoolStore`'s (by directory descriptor): this module
decides which, in what order, and for which mailboxes.

What it guarantees:
- every mailbox name is checked (one path component, no control characters) before anything is
  copied;
- mailbox directories (and a maildir's ``tmp`` and ``new``) are opened one component at a time
  with ``O_NOFOLLOW`` and written through their descriptors: a symlink planted under ``base`` is
  refused (SpoolStoreError ELOOP), never followed;
- the original is deleted only after every copy was made.
"""

from __future__ import annotations

import os
from pathlib import Path

from .names import MessageId, State
from .store import SpoolStore, _check_mailbox_name, _privileged


@_privileged
def copy_to_directories(
    store: SpoolStore,
    mid: MessageId,
    state: State,
    base: str | os.PathLike[str],
    names: list[str],
    *,
    hardlink: bool = False,
    envelope_only: bool = False,
    create: bool = False,
    delete_original: bool = False,
) -> list[Path]:
    """Copy a message into ``base/<name>`` for each mailbox name; returns the files written.

    A directory with ``new``, ``tmp`` and ``cur`` sub-directories is a maildir: the content alone
    goes to ``tmp`` and is renamed into ``new`` under a maildir name, as E-MailRelay 2.6b names it
    (``<secs>.<usecs>.<pid>.<host>.<n>``).  Any other directory gets the content (hard-linked
    when ``hardlink`` and possible; not at all when ``envelope_only``, ``copy:pop``) and then a
    committed envelope.  ``create`` makes missing mailbox directories (``deliver:``).  With
    ``delete_original`` the original envelope (and content, unless ``envelope_only``) is deleted
    after every copy was made.
    """
    base_dir = Path(base).absolute()
    for name in names:
        _check_mailbox_name(name)
    env_data = store.envelope_bytes_nofollow(mid, state)
    out: list[Path] = []
    base_fd = store.open_delivery_base(base_dir, create=create)
    try:
        for name in names:
            box = store.open_mailbox(base_fd, base_dir, name, create)
            try:
                if store.is_maildir_at(box):
                    out.append(store.copy_into_maildir(mid, box, base_dir / name, hardlink=hardlink))
                    continue
                if not envelope_only:
                    store.place_content_at(mid, box, hardlink=hardlink)
                out.append(base_dir / name / store.commit_envelope_at(box, mid, env_data))
            finally:
                os.close(box)
    finally:
        os.close(base_fd)
    if delete_original:
        store.remove_delivered_original(mid, state, content=not envelope_only)
    return out
