"""Small helpers shared by test modules."""

import sqlite3
from pathlib import Path


def count_rows(store) -> int:
    """Finished cells in a store that another process may be writing (0 while it is absent)."""
    if not Path(store).is_file():
        return 0
    try:
        with sqlite3.connect(store, timeout=5) as db:
            return db.execute("SELECT count(*) FROM cells").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
