"""The agent's durable state in SQLite (WAL, synchronous=FULL): the alert outbox, the relay
outbox of frames to devices, replay counters, the dedup window and device liveness.

Why SQLite: one file, transactions, fsync on commit, on every Pi. Writes are grouped: the
core stages a batch of frames and commits once (group commit), so durability costs one
fsync per batch, not per frame; nothing is acknowledged to a sender before that commit.
Reads on the hot path (last counter, recent digests) come from memory caches that mirror
the tables.

Every SQLite failure leaves as one ``StorageError`` that says what is wrong with which file
and what to do. A commit that fails (a full disk) keeps its staged writes: the caller
retries it and acknowledges nothing until it succeeds.
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
    escalated INTEGER NOT NULL DEFAULT 0,
    frame BLOB,                              -- the device's frame, shared with the district (SPEC.md 5)
    epoch INTEGER                            -- its rotating id's epoch, for a sealed frame
);
CREATE INDEX IF NOT EXISTS alerts_state ON alerts (state, seq);
CREATE TABLE IF NOT EXISTS counters (
    device_id INTEGER NOT NULL,
    direction TEXT NOT NULL,                 -- 'up': highest accepted; 'down': last sent
    value INTEGER NOT NULL,
    window INTEGER NOT NULL DEFAULT 1,       -- 'up': the replay window's bits (SPEC.md 5)
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
    rid_offset INTEGER NOT NULL DEFAULT 0,
    rid_clockless INTEGER NOT NULL DEFAULT 0 -- the highest clockless start heard (SPEC.md 3.2)
);
CREATE TABLE IF NOT EXISTS downlinks (      -- frames to devices not yet handed over: sent again after a crash
    device_id INTEGER NOT NULL,
    counter INTEGER NOT NULL,
    kind TEXT NOT NULL,
    via TEXT NOT NULL,                       -- 'mqtt' (until the local broker's PUBACK) or 'ble'
    frame BLOB NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (device_id, counter)
);
CREATE TABLE IF NOT EXISTS center_acks (    -- acknowledgements relayed, so a redelivered one is not relayed twice
    alert_id TEXT NOT NULL,
    status TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (alert_id, status)
);
"""

_SIGN = 1 << 63


class StorageError(RuntimeError):
    """agent.db cannot be used or written; the message names the file and the fix."""


def storage_error(path, err):
    """One line for a person: what is wrong with ``path`` and what to do."""
    text = str(err)
    lowered = text.lower()
    if "full" in lowered:
        fix = "the disk holding it is full: free space there (`df -h %s`); the agent retries" % path.parent
    elif "readonly" in lowered or "read-only" in lowered or "unable to open" in lowered:
        fix = ("it is read-only or its directory cannot be written: run the agent as its user "
               "(`sudo -u ansim`), `chown` the directory to that user, or remount the filesystem read-write")
    elif "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        fix = ("the file is damaged: stop the agent, move it aside (`mv %s %s.broken`; keep it for analysis) "
               "and start again; alerts not yet delivered from it are then lost" % (path, path))
    elif "locked" in lowered or "busy" in lowered:
        fix = "another process holds it: stop the other agent using this data_dir"
    else:
        fix = "check the disk and the file's permissions"
    return StorageError("agent.db %s: %s: %s" % (path, text, fix))


def _to_sql(window):
    return window - (1 << 64) if window & _SIGN else window


def _from_sql(value):
    return value & ((1 << 64) - 1)


class Store:
    def __init__(self, path):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self._open()
        except (sqlite3.Error, OSError) as err:
            raise storage_error(self.path, err) from None
        self._staged = []
        self._acks_staged = set()  # (alert_id, status) staged, not yet committed

    def _open(self):
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        if self._db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("database disk image is malformed (quick_check)")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(counters)")}
        if "window" not in columns:  # a store from before the replay window
            self._db.execute("ALTER TABLE counters ADD COLUMN window INTEGER NOT NULL DEFAULT 1")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(alerts)")}
        for column in ("frame BLOB", "epoch INTEGER"):  # a store from before the district's shares
            if column.split()[0] not in columns:
                self._db.execute("ALTER TABLE alerts ADD COLUMN " + column)
        if "rid_clockless" not in {row[1] for row in self._db.execute("PRAGMA table_info(devices)")}:
            self._db.execute("ALTER TABLE devices ADD COLUMN rid_clockless INTEGER NOT NULL DEFAULT 0")
        self._up = {device_id: (value, _from_sql(window)) for device_id, value, window in
                    self._db.execute("SELECT device_id, value, window FROM counters WHERE direction='up'")}
        self._down = dict(self._db.execute("SELECT device_id, value FROM counters WHERE direction='down'"))
        self._seen = dict(self._db.execute("SELECT digest, at FROM seen"))
        self._heard = dict(self._db.execute("SELECT device_id, last_heard FROM devices WHERE last_heard IS NOT NULL"))
        self._heard_persisted = dict(self._heard)

    def close(self):
        with self._lock:
            self._db.close()

    # -- hot path: memory first, staged writes, one commit per batch ----------------------

    def seen_at(self, digest):
        return self._seen.get(digest)

    def up_state(self, device_id):
        """(highest accepted counter, replay window bits) of a device, or (None, 0)."""
        return self._up.get(device_id, (None, 0))

    def accept(self, device_id, highest, window, digest, now):
        """Stage an accepted frame: the device's replay state after it, and its digest for the
        dedup window."""
        self._up[device_id] = (highest, window)
        self._seen[digest] = now
        self._staged.append(("INSERT INTO counters (device_id, direction, value, window) VALUES (?, 'up', ?, ?) ON CONFLICT DO UPDATE "
                             "SET value=excluded.value, window=excluded.window",
                             (device_id, highest, _to_sql(window))))
        self._staged.append(("INSERT OR REPLACE INTO seen VALUES (?, ?)", (digest, now)))

    def add_alert(self, alert_id, device_id, received, created, body, frame=None, epoch=None):
        """Stage an alert for the outbox, with the ``frame`` that raised it (and its rid's
        ``epoch``) for the district; an alert id already stored is ignored (idempotent)."""
        self._staged.append(("INSERT OR IGNORE INTO alerts (alert_id, device_id, received, created, body, frame, "
                             "epoch) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (alert_id, device_id, received, created, json.dumps(body, sort_keys=True), frame,
                              epoch)))

    def heard(self, device_id, now):
        """Note that a device spoke; persisted at most every HEARD_PERSIST_S per device."""
        self._heard[device_id] = now
        if now - self._heard_persisted.get(device_id, 0.0) < HEARD_PERSIST_S:
            return
        self._heard_persisted[device_id] = now
        self._staged.append(("INSERT INTO devices (device_id, last_heard, offline) VALUES (?, ?, 0) "
                             "ON CONFLICT DO UPDATE SET last_heard=excluded.last_heard, offline=0", (device_id, now)))

    def commit(self):
        """Write everything staged in one transaction, fsynced. Returns how many writes.
        Raises StorageError and keeps what was staged when the write fails (a full disk):
        call again later; nothing staged may be acknowledged before a commit succeeds."""
        staged = self._staged
        if not staged:
            return 0
        grouped = {}  # one executemany per statement; rows keep their order within it
        for sql, args in staged:
            grouped.setdefault(sql, []).append(args)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for sql, rows in grouped.items():
                        self._db.executemany(sql, rows)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as err:
                raise storage_error(self.path, err) from None
        del self._staged[:len(staged)]
        self._acks_staged.clear()
        return len(staged)

    def pending_writes(self):
        return len(self._staged)

    def next_down(self, device_id):
        """The next downlink counter for a device. Staged: the caller commits before the
        frame leaves, so a restarted agent never reuses a counter a device has seen."""
        value = self._down.get(device_id, 0) + 1
        self._down[device_id] = value
        self._staged.append(("INSERT INTO counters (device_id, direction, value) VALUES (?, 'down', ?) ON CONFLICT DO UPDATE SET value=excluded.value",
                             (device_id, value)))
        return value

    def down_at_least(self, device_id, value):
        """Never send ``device_id`` a counter at or below ``value`` (what it says it accepted:
        an agent that lost its database resumes above it, SPEC.md section 5). Staged."""
        if value > self._down.get(device_id, 0):
            self._down[device_id] = value
            self._staged.append(("INSERT INTO counters (device_id, direction, value) VALUES (?, 'down', ?) ON CONFLICT DO UPDATE "
                                 "SET value=max(value, excluded.value)", (device_id, value)))

    def next_session(self):
        """A new uplink session sequence number (birth/death certificates), never reused."""
        with self._lock:
            try:
                self._db.execute("INSERT INTO meta VALUES ('session', 1) ON CONFLICT DO UPDATE SET value=value+1")
                return self._db.execute("SELECT value FROM meta WHERE key='session'").fetchone()[0]
            except sqlite3.Error as err:
                raise storage_error(self.path, err) from None

    # -- frames to devices: staged with what caused them, deleted once handed over ----------

    def add_downlinks(self, downlinks, now):
        """Stage frames to devices (``Downlink`` objects with ``counter``) in the same commit as
        what caused them: a crash before they reach the device's broker sends them again."""
        for d in downlinks:
            self._staged.append(("INSERT OR IGNORE INTO downlinks VALUES (?, ?, ?, ?, ?, ?)",
                                 (d.device_id, d.counter, d.kind, d.via, d.frame, now)))

    def handed_over(self, keys):
        """Stage the deletion of downlinks ``[(device_id, counter)]`` their broker PUBACKed
        (or whose advertising ended)."""
        for key in keys:
            self._staged.append(("DELETE FROM downlinks WHERE device_id=? AND counter=?", key))

    def pending_downlinks(self):
        """(device_id, counter, kind, via, frame, created) not yet handed over, per device in
        counter order (a device refuses a lower counter after a higher one)."""
        return self._query("SELECT device_id, counter, kind, via, frame, created FROM downlinks "
                           "ORDER BY created, device_id, counter")

    def relay_depth(self):
        return self._query("SELECT COUNT(*) FROM downlinks")[0][0]

    def ack_alert(self, alert_id, status, now):
        """Stage the center's acknowledgement: closes the alert for escalation. Returns False
        when this status was already recorded for it (a redelivered acknowledgement)."""
        key = (alert_id, status)
        if key in self._acks_staged or self._query("SELECT 1 FROM center_acks WHERE alert_id=? AND status=?", key):
            return False
        self._acks_staged.add(key)
        self._staged.append(("INSERT OR IGNORE INTO center_acks VALUES (?, ?, ?)", (alert_id, status, now)))
        self._staged.append(("UPDATE alerts SET state='acked', acked_at=?, delivered_at=coalesce(delivered_at, ?) "
                             "WHERE alert_id=? AND state IN ('pending', 'delivered')", (now, now, alert_id)))
        return True

    # -- the outbox -----------------------------------------------------------------------

    def _query(self, sql, args=()):
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as err:
                raise storage_error(self.path, err) from None

    def _write(self, sql, args=(), many=False):
        with self._lock:
            try:
                return (self._db.executemany if many else self._db.execute)(sql, args).rowcount
            except sqlite3.Error as err:
                raise storage_error(self.path, err) from None

    def undelivered(self, after_seq=0, limit=1000):
        """Alerts not yet PUBACKed by the center's broker, in order: (seq, alert_id, body,
        received, frame, epoch)."""
        return self._query("SELECT seq, alert_id, body, received, frame, epoch FROM alerts "
                           "WHERE state='pending' AND seq>? ORDER BY seq LIMIT ?", (after_seq, limit))

    def mark_delivered(self, seqs, now):
        """Record PUBACKs in one transaction. Losing this write in a crash only re-sends alerts,
        which the center deduplicates by id."""
        self._write("UPDATE alerts SET state='delivered', delivered_at=? WHERE seq=? AND state='pending'",
                    [(now, seq) for seq in seqs], many=True)

    def due_for_escalation(self, delivered_before, created_before, limit):
        """Unacknowledged alerts not yet escalated, oldest first: delivered to the district's
        broker before ``delivered_before`` (its center had the whole delay), or not delivered
        and created before ``created_before`` (None: not these; the district's broker takes
        them, they are only waiting for their turn)."""
        if created_before is None:
            return self._query("SELECT seq, alert_id, body FROM alerts WHERE state='delivered' AND escalated=0 "
                               "AND delivered_at<? ORDER BY seq LIMIT ?", (delivered_before, limit))
        return self._query("SELECT seq, alert_id, body FROM alerts WHERE escalated=0 AND "
                           "(state='delivered' AND delivered_at<? OR state='pending' AND created<?) "
                           "ORDER BY seq LIMIT ?", (delivered_before, created_before, limit))

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
        self._write("DELETE FROM seen WHERE at<?", (cutoff,))
        self._seen = {d: t for d, t in self._seen.items() if t >= cutoff}
        self._write("DELETE FROM center_acks WHERE at<?", (now - retention_s,))
        return self._write("DELETE FROM alerts WHERE state IN ('acked', 'closed') AND created<?",
                           (now - retention_s,))

    # -- devices ---------------------------------------------------------------------------

    def last_heard(self):
        """device_id -> when it was last heard (memory, mirrored to disk every HEARD_PERSIST_S)."""
        return self._heard

    def set_offline(self, device_id, offline):
        """Stage a device's liveness as the agent reported it to the center."""
        self._staged.append(("INSERT INTO devices (device_id, offline) VALUES (?, ?) ON CONFLICT DO UPDATE SET "
                             "offline=excluded.offline", (device_id, int(offline))))

    def offline_devices(self):
        return {row[0] for row in self._query("SELECT device_id FROM devices WHERE offline=1")}

    def save_rid_state(self, device_id, last_epoch, offset, clockless):
        self._staged.append(("INSERT INTO devices (device_id, rid_last_epoch, rid_offset, rid_clockless) "
                             "VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET rid_last_epoch=excluded.rid_last_epoch, "
                             "rid_offset=excluded.rid_offset, rid_clockless=excluded.rid_clockless",
                             (device_id, last_epoch, offset, clockless)))

    def rid_states(self):
        """``{device_id: (last_epoch, offset, clockless)}``: what the resolver learnt (``resolver.state``)."""
        return {row[0]: tuple(row[1:]) for row in
                self._query("SELECT device_id, rid_last_epoch, rid_offset, rid_clockless FROM devices "
                            "WHERE rid_last_epoch IS NOT NULL")}
