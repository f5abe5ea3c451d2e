"""The PostgreSQL ledger against a real server: same rows as SQLite, one holder per run, leases that expire."""

from __future__ import annotations

import threading
import time

import pytest

from neptune_migration.errors import MigrationError
from neptune_migration.ledger import DONE, RUNNING, PostgresLedger, RunClaimed, open_ledger, redact_uri
from neptune_migration.vocabulary import RunRef

REF = RunRef("ws/proj", "RUN-1")


def test_same_interface_as_sqlite(pg_state: str) -> None:
    with open_ledger(pg_state) as ledger:
        assert isinstance(ledger, PostgresLedger)
        entry = ledger.start(REF, "load", "mlflow:x")
        assert (entry.status, entry.attempts, entry.checkpoint) == (RUNNING, 1, None)
        ledger.save_checkpoint(REF, "load", "mlflow:x", {"metrics": 5})
        ledger.fail(REF, "load", "mlflow:x", "boom")
        again = ledger.start(REF, "load", "mlflow:x")
        assert (again.attempts, again.checkpoint) == (2, {"metrics": 5})  # the checkpoint survives a failure
        ledger.finish(REF, "load", "mlflow:x", "abc", details={"points": 3})
        assert ledger.is_done(REF, "load", "mlflow:x")
        ledger.skip(RunRef("ws/proj", "RUN-2"), "load", "mlflow:x", "not wanted")
        rows = {(e.ref.run_id, e.status) for e in ledger.entries(stage="load")}
        assert rows == {("RUN-1", DONE), ("RUN-2", "skipped")}
        done = ledger.get(REF, "load", "mlflow:x")
        assert done is not None and done.details == {"points": 3} and done.target_id == "abc"
    # A second driver (another process in real life) sees the same rows and the schema is not created twice.
    with open_ledger(pg_state) as other:
        assert other.is_done(REF, "load", "mlflow:x")


def test_two_holders_never_take_the_same_run(pg_state: str) -> None:
    a, b = PostgresLedger(pg_state, lease=30), PostgresLedger(pg_state, lease=30)
    try:
        a.start(REF, "load", "t")
        with pytest.raises(RunClaimed, match="RUN-1") as info:
            b.start(REF, "load", "t")
        assert info.value.holder == a.owner
        with pytest.raises(RunClaimed):  # nor write over it
            b.fail(REF, "load", "t", "not mine")
        a.finish(REF, "load", "t")
        assert b.start(REF, "load", "t").attempts == 2  # settled: free for anyone
        b.finish(REF, "load", "t")
        # Many threads of many holders racing for the same runs: each run is started by exactly one.
        refs = [RunRef("ws/proj", f"R{i}") for i in range(40)]
        winners: dict[str, list[str]] = {}
        lock = threading.Lock()

        def race(ledger: PostgresLedger) -> None:
            for ref in refs:
                try:
                    ledger.start(ref, "export", "t")
                except RunClaimed:
                    continue
                with lock:
                    winners.setdefault(ref.key, []).append(ledger.owner)

        threads = [threading.Thread(target=race, args=(ledger,)) for ledger in (a, b) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(winners) == sorted(r.key for r in refs)
        assert all(len(owners) == 1 for owners in winners.values()), winners
    finally:
        a.close()
        b.close()


def test_a_dead_holders_lease_expires_and_a_live_one_is_renewed(pg_state: str) -> None:
    dead, live, other = (PostgresLedger(pg_state, lease=1.5) for _ in range(3))
    try:
        dead.start(REF, "load", "t")
        dead.save_checkpoint(REF, "load", "t", {"done": 7})
        dead._stop_heartbeat.set()  # what SIGKILL does to a holder: no more renewals
        live_ref = RunRef("ws/proj", "RUN-LIVE")
        live.start(live_ref, "load", "t")
        with pytest.raises(RunClaimed):
            other.start(REF, "load", "t")
        time.sleep(2.5)
        entry = other.start(REF, "load", "t")  # the lease ran out: the run resumes from the dead one's checkpoint
        assert entry.checkpoint == {"done": 7} and entry.attempts == 2
        with pytest.raises(RunClaimed):  # the live holder's heartbeat kept its run
            other.start(live_ref, "load", "t")
        with pytest.raises(RunClaimed):  # and the dead one may not write the run it lost
            dead.finish(REF, "load", "t")
    finally:
        for ledger in (dead, live, other):
            ledger.close()
    with open_ledger(pg_state) as check:
        entry = check.get(REF, "load", "t")
        assert entry is not None and entry.status == RUNNING and entry.attempts == 2


def test_no_password_in_messages(postgres) -> None:  # type: ignore[no-untyped-def]
    uri = postgres.uri("postgres").replace(postgres.password, "wrong-" + postgres.password)
    with pytest.raises(MigrationError) as info:
        open_ledger(uri)
    assert postgres.password not in str(info.value) and "***" in str(info.value)
    assert redact_uri(uri) == uri.replace("wrong-" + postgres.password, "***")


def test_what_a_target_run_holds_and_the_migration_from_schema_2(pg_state: str) -> None:
    import psycopg

    place = {"where": "experiment 'ws/proj'", "options": "--experiment-by project"}
    with open_ledger(pg_state) as ledger:
        ledger.record_loaded(REF, "mlflow:x", place)
        held = ledger.loaded(REF, "mlflow:x")
        assert held is not None and (held.placement, held.selection, held.mapping_version) == (place, None, None)
        ledger.record_loaded(REF, "mlflow:x", place, {"passes": [{}], "parts": ["a"]}, 2)
        ledger.record_loaded(REF, "mlflow:x", place)  # a placement alone keeps what the run holds
        held = ledger.loaded(REF, "mlflow:x")
        assert held is not None and held.selection == {"passes": [{}], "parts": ["a"]} and held.mapping_version == 2
        ledger.forget_loaded(REF, "mlflow:x")
        assert ledger.loaded(REF, "mlflow:x") is None
        ledger.start(REF, "load", "mlflow:x")
        ledger.finish(REF, "load", "mlflow:x", "abc", details={"mapping_version": 2})
    # A ledger at schema 2 (before the table existed) is migrated: its done loads keep their mapping version.
    with psycopg.connect(pg_state, autocommit=True) as db:
        db.execute("DROP TABLE neptune_migration_loaded")
        db.execute("DELETE FROM neptune_migration_schema WHERE version = 3")
    with open_ledger(pg_state) as ledger:
        held = ledger.loaded(REF, "mlflow:x")
        assert held is not None and (held.placement, held.selection, held.mapping_version) == (None, None, 2)
