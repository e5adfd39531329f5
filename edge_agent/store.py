"""The agent's durable state in SQLite (WAL, synchronous=FULL): the alert outbox, replay
counters, the dedup window and device liveness.

Why SQLite: one file, transactions, fsync on commit, on every Pi. Writes are grouped: the
core stages a batch of frames and commits once (group commit), so durability costs one
fsync per batch, not per frame; nothing is acknowledged to a sender before that commit.
Reads on the hot path (last counter, recent digests) come from memory caches that mirror
the tables.
"""

import json
import sqlite3
import threading
from pathlib import Path

HEARD_PERSIST_S = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id TEXT NOT NULL UNIQUE,
    device_id INTEGER NOT NULL,
    received REAL NOT NULL,                  -- when the frame was heard (latency metrics)
    created REAL NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',   -- pending, delivered (PUBACK), acked (center), closed
    delivered_at REAL,
    acked_at REAL,
    escalated INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS alerts_state ON alerts (state, seq);
CREATE TABLE IF NOT EXISTS counters (
    device_id INTEGER NOT NULL,
    direction TEXT NOT NULL,                 -- 'up': last accepted; 'down': last sent
    value INTEGER NOT NULL,
    PRIMARY KEY (device_id, direction)
);
CREATE TABLE IF NOT EXISTS seen (
    digest BLOB PRIMARY KEY,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    device_id INTEGER PRIMARY KEY,
    last_heard REAL,
    offline INTEGER NOT NULL DEFAULT 0,
    rid_last_epoch INTEGER,
    rid_offset INTEGER NOT NULL DEFAULT 0
);
"""


class Store:
    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._up = dict(self._db.execute("SELECT device_id, value FROM counters WHERE direction='up'"))
        self._down = dict(self._db.execute("SELECT device_id, value FROM counters WHERE direction='down'"))
        self._seen = dict(self._db.execute("SELECT digest, at FROM seen"))
        self._heard = dict(self._db.execute("SELECT device_id, last_heard FROM devices WHERE last_heard IS NOT NULL"))
        self._heard_persisted = dict(self._heard)
        self._staged = []

    def close(self):
        with self._lock:
            self._db.close()

    # -- hot path: memory first, staged writes, one commit per batch ----------------------

    def seen_at(self, digest):
        return self._seen.get(digest)

    def last_up(self, device_id):
        return self._up.get(device_id)

    def accept(self, device_id, counter, digest, now):
        """Stage an accepted frame: its counter and its digest for the dedup window."""
        self._up[device_id] = counter
        self._seen[digest] = now
        self._staged.append(("INSERT INTO counters VALUES (?, 'up', ?) ON CONFLICT DO UPDATE SET value=excluded.value",
                             (device_id, counter)))
        self._staged.append(("INSERT OR REPLACE INTO seen VALUES (?, ?)", (digest, now)))

    def add_alert(self, alert_id, device_id, received, created, body):
        """Stage an alert for the outbox; an alert id already stored is ignored (idempotent)."""
        self._staged.append(("INSERT OR IGNORE INTO alerts (alert_id, device_id, received, created, body) "
                             "VALUES (?, ?, ?, ?, ?)",
                             (alert_id, device_id, received, created, json.dumps(body, sort_keys=True))))

    def heard(self, device_id, now):
        """Note that a device spoke; persisted at most every HEARD_PERSIST_S per device."""
        self._heard[device_id] = now
        if now - self._heard_persisted.get(device_id, 0.0) < HEARD_PERSIST_S:
            return
        self._heard_persisted[device_id] = now
        self._staged.append(("INSERT INTO devices (device_id, last_heard, offline) VALUES (?, ?, 0) "
                             "ON CONFLICT DO UPDATE SET last_heard=excluded.last_heard, offline=0", (device_id, now)))

    def commit(self):
        """Write everything staged in one transaction, fsynced. Returns how many writes."""
        staged, self._staged = self._staged, []
        if not staged:
            return 0
        grouped = {}  # one executemany per statement; rows keep their order within it
        for sql, args in staged:
            grouped.setdefault(sql, []).append(args)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in grouped.items():
                    self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(staged)

    def next_down(self, device_id):
        """The next downlink counter for a device. Staged: the caller commits before the
        frame leaves, so a restarted agent never reuses a counter a device has seen."""
        value = self._down.get(device_id, 0) + 1
        self._down[device_id] = value
        self._staged.append(("INSERT INTO counters VALUES (?, 'down', ?) ON CONFLICT DO UPDATE SET value=excluded.value",
                             (device_id, value)))
        return value

    def down_at_least(self, device_id, value):
        """Never send ``device_id`` a counter at or below ``value`` (what it says it accepted:
        an agent that lost its database resumes above it, SPEC.md section 5). Staged."""
        if value > self._down.get(device_id, 0):
            self._down[device_id] = value
            self._staged.append(("INSERT INTO counters VALUES (?, 'down', ?) ON CONFLICT DO UPDATE "
                                 "SET value=max(value, excluded.value)", (device_id, value)))

    def next_session(self):
        """A new uplink session sequence number (birth/death certificates), never reused."""
        with self._lock:
            self._db.execute("INSERT INTO meta VALUES ('session', 1) ON CONFLICT DO UPDATE SET value=value+1")
            return self._db.execute("SELECT value FROM meta WHERE key='session'").fetchone()[0]

    # -- the outbox -----------------------------------------------------------------------

    def _query(self, sql, args=()):
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _write(self, sql, args=()):
        with self._lock:
            return self._db.execute(sql, args).rowcount

    def undelivered(self, after_seq=0, limit=1000):
        """Alerts not yet PUBACKed by the center's broker, in order: (seq, alert_id, body, received)."""
        return self._query("SELECT seq, alert_id, body, received FROM alerts WHERE state='pending' AND seq>? "
                           "ORDER BY seq LIMIT ?", (after_seq, limit))

    def mark_delivered(self, seqs, now):
        """Record PUBACKs in one transaction. Losing this write in a crash only re-sends alerts,
        which the center deduplicates by id."""
        with self._lock:
            self._db.executemany("UPDATE alerts SET state='delivered', delivered_at=? WHERE seq=? AND state='pending'",
                                 [(now, seq) for seq in seqs])

    def mark_acked(self, alert_id, now):
        """The center acknowledged: returns True if this closed an open alert."""
        return self._write("UPDATE alerts SET state='acked', acked_at=? WHERE alert_id=? AND state IN "
                           "('pending', 'delivered')", (now, alert_id)) == 1

    def due_for_escalation(self, before):
        """Stored but unacknowledged alerts created before ``before`` and not yet escalated (also
        undelivered ones: the fallback center may be reachable when the district is not)."""
        return self._query("SELECT seq, alert_id, body FROM alerts WHERE state IN ('pending', 'delivered') "
                           "AND escalated=0 AND created<? ORDER BY seq", (before,))

    def mark_escalated(self, seq):
        self._write("UPDATE alerts SET escalated=1 WHERE seq=?", (seq,))

    def alert(self, alert_id):
        rows = self._query("SELECT seq, state, body FROM alerts WHERE alert_id=?", (alert_id,))
        return None if not rows else (rows[0][0], rows[0][1], json.loads(rows[0][2]))

    def state_counts(self):
        """{state: number of alerts} for status displays."""
        return dict(self._query("SELECT state, COUNT(*) FROM alerts GROUP BY state"))

    def queue_depth(self):
        return self._query("SELECT COUNT(*) FROM alerts WHERE state='pending'")[0][0]

    def purge(self, now, retention_s, dedup_window_s):
        """Forget acknowledged alerts past retention and digests past the dedup window."""
        cutoff = now - dedup_window_s
        self._seen = {d: t for d, t in self._seen.items() if t >= cutoff}
        with self._lock:
            self._db.execute("DELETE FROM seen WHERE at<?", (cutoff,))
            return self._db.execute("DELETE FROM alerts WHERE state IN ('acked', 'closed') AND created<?",
                                    (now - retention_s,)).rowcount

    # -- devices ---------------------------------------------------------------------------

    def last_heard(self):
        """device_id -> when it was last heard (memory, mirrored to disk every HEARD_PERSIST_S)."""
        return self._heard

    def set_offline(self, device_id, offline):
        self._write("INSERT INTO devices (device_id, offline) VALUES (?, ?) ON CONFLICT DO UPDATE SET "
                    "offline=excluded.offline", (device_id, int(offline)))

    def offline_devices(self):
        return {row[0] for row in self._query("SELECT device_id FROM devices WHERE offline=1")}

    def save_rid_state(self, device_id, last_epoch, offset):
        self._staged.append(("INSERT INTO devices (device_id, rid_last_epoch, rid_offset) VALUES (?, ?, ?) "
                             "ON CONFLICT DO UPDATE SET rid_last_epoch=excluded.rid_last_epoch, "
                             "rid_offset=excluded.rid_offset", (device_id, last_epoch, offset)))

    def rid_states(self):
        return {row[0]: (row[1], row[2]) for row in
                self._query("SELECT device_id, rid_last_epoch, rid_offset FROM devices WHERE rid_last_epoch IS NOT NULL")}
