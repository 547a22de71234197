"""A writer of random churn on the books table: inserts, updates and deletes in small
transactions (now and then a bulk insert spanning several batches) until stopped."""

from __future__ import annotations

import random
import threading

import psycopg


class ChurnWriter(threading.Thread):
    """Inserts, updates and deletes books in small transactions until stopped."""

    def __init__(self, dsn: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.transactions = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn) as conn:
                while not self.stop_event.is_set():
                    self._transaction(conn)
                    self.transactions += 1
                    self.stop_event.wait(0.05)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def _transaction(self, conn: psycopg.Connection) -> None:
        rng = self.rng
        with conn.transaction():
            ids = [r[0] for r in conn.execute("SELECT id FROM books").fetchall()]
            for _ in range(rng.randint(1, 4)):
                roll = rng.random()
                if roll < 0.55 or not ids:
                    n = rng.randint(0, 10**6)
                    conn.execute(
                        "INSERT INTO books (name, description, author, year) VALUES (%s, %s, %s, %s)",
                        (f"Book {n}", f"A story about {rng.choice(['ships', 'dragons', 'cities', 'robots'])} number {n}.",
                         f"Author {n % 97}", 1900 + n % 120),
                    )
                elif roll < 0.85:
                    key = rng.choice(ids)
                    conn.execute("UPDATE books SET description = description || ' Revised.', year = year + 1 WHERE id = %s", (key,))
                else:
                    key = rng.choice(ids)
                    conn.execute("DELETE FROM books WHERE id = %s", (key,))
                    ids.remove(key)
            if rng.random() < 0.04:
                # a larger transaction: spans several change batches
                conn.execute(
                    "INSERT INTO books (name, description, author, year) "
                    "SELECT 'Bulk ' || g, 'A bulk-loaded tale number ' || g, 'Bulk', 2000 FROM generate_series(1, 150) g"
                )

    def finish(self) -> None:
        self.stop_event.set()
        self.join(30)
        assert self.error is None, f"churn writer failed: {self.error!r}"
