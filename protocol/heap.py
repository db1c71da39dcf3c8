"""The long-lived processes' heap, kept out of the garbage collector's full passes.

A full (oldest-generation) collection walks every tracked object of the process and stops its
event loop meanwhile. After start-up most of those objects are the imported modules, their
classes and functions, which live as long as the process: measured on the development machine,
one full collection took 36 ms in the router and 21 ms in the listener, and CPython runs one
whenever enough objects survived younger collections — under load every few seconds. A message
that arrives during one waits for it: that was the tail (p99 up to 100 ms under load, against
2 ms directly) of the latency bench, not the path's work.

:func:`freeze` moves every object alive at that moment to the permanent generation
(``gc.freeze``): later collections, full ones included, look only at what was made since.
Garbage among the frozen objects is never collected; a process calls it once its start-up is
done (imports, settings, its servers made), when nothing it holds is garbage.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("dit4c.heap")


def freeze() -> int:
    """Collect what start-up left behind, then freeze the rest; return how many objects the
    collector will not look at again (``gc.get_freeze_count``)."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("start-up heap frozen: %d objects out of the collector's full passes", frozen)
    return frozen
