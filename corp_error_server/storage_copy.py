"""``corp-error-server migrate SRC DST``: copy one database into another (SQLite into PostgreSQL).

Rows are copied as they are, ids included, so the destination answers exactly as the source did.
The whole copy is ONE transaction of the destination: interrupted, it leaves nothing behind, and
running it again starts over. Rows are upserted by primary key, so a rerun after success changes
nothing, and a rerun after the source took more beacons copies the new ones and the counts as they
now are. A destination holding data that did not come from this source is refused: ids would mix.
"""

from __future__ import annotations

from typing import Dict, Sequence

from .storage import Cursor, Storage, StorageConflict
from .storage_schema import COPIED_TABLES

_BATCH = 2000


def copy_database(src: Storage, dst: Storage, source_name: str, progress=lambda table: None) -> Dict[str, int]:
    """Copy every table of ``src`` into ``dst``; returns the rows copied per table."""
    # counts are copied as the source has them, over the destination's: with none pending in the source,
    # each count row a fold in the destination made is one the source has too (a rerun copies it anew)
    src.fold_counts()

    def work(d: Cursor) -> Dict[str, int]:
        _claim(d, source_name)
        return src._read(lambda s: {table: _copy_table(s, d, table, key, progress) for table, key in COPIED_TABLES})

    return dst._write(work)


def _claim(d: Cursor, source_name: str) -> None:
    row = d.execute("SELECT value FROM meta WHERE key = 'migrated_from'").fetchone()
    if row is None and any(d.execute("SELECT 1 FROM %s LIMIT 1" % table).fetchone() for table, _ in COPIED_TABLES):
        raise StorageConflict(
            "the destination already holds data that was not migrated from %s; "
            "migrate into an empty database" % source_name
        )
    if row is not None and row[0] != source_name:
        raise StorageConflict("the destination holds a migration from %s, not from %s" % (row[0], source_name))
    d.execute("INSERT INTO meta(key, value) VALUES('migrated_from', ?) ON CONFLICT DO NOTHING", (source_name,))


def _copy_table(s: Cursor, d: Cursor, table: str, key: Sequence[str], progress) -> int:
    progress(table)
    s.execute("SELECT * FROM %s ORDER BY %s" % (table, ", ".join(key)))
    columns = s.columns
    others = [column for column in columns if column not in key]
    insert = "INSERT INTO %s(%s) VALUES(%s) ON CONFLICT(%s) DO " % (
        table,
        ", ".join(columns),
        ", ".join("?" * len(columns)),
        ", ".join(key),
    )
    insert += "UPDATE SET " + ", ".join("%s = excluded.%s" % (c, c) for c in others) if others else "NOTHING"
    copied = 0
    while True:
        rows = s.fetchmany(_BATCH)
        if not rows:
            break
        d.executemany(insert, rows)
        copied += len(rows)
    if tuple(key) == ("id",):
        d.ids_copied(table)
    return copied
