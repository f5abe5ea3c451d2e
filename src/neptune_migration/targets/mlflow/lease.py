"""One writer per MLflow experiment, whatever the ledger.

Two `neptune-migrate` processes with different ledgers would both search for a run's key, find nothing and both
create it. So a process claims each experiment it writes into with an experiment tag naming itself (host, pid, a
random id) and renews the claim while it works; another process finding a live claim refuses with a message naming
the holder. A claim is free again when its holder removes it (close), when it was not renewed for `LEASE_SECONDS`
(a holder on another machine that died), or at once when the holder was a process of this machine that is gone
(a SIGKILLed run resumed on the same machine continues immediately). Servers up to MLflow 3.0 cannot delete an
experiment tag (DeleteExperimentTag answers 404): there the holder releases its claim by writing it again marked
`released`, which every reader takes as free.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from neptune_migration.errors import TargetError

LEASE_TAG = "neptune.migration.writer"
LEASE_SECONDS = 90.0
RENEW_SECONDS = 20.0
# How long a claim is left to settle before it is trusted: two claims written at the same moment both read back
# one winner.
SETTLE_SECONDS = 0.3


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ExperimentLeases:
    """The claims of one target instance; `claim` before the first write into an experiment, `release` at close."""

    def __init__(self, client: Any, retry: Callable[[Callable[[], Any]], Any], writer: str | None = None) -> None:
        """`writer`: an id shared by the processes of one migration (a cluster's workers, whose shared ledger keeps
        them off each other's runs), so they write into one experiment together; other writers stay out."""
        self.client = client
        self.retry = retry
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "id": writer or uuid.uuid4().hex}
        self._held: dict[str, str] = {}  # experiment id -> name
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        # False for a server without DeleteExperimentTag: release() then marks the claim released instead.
        self.deletes_tags = True

    def _read(self, experiment_id: str) -> dict[str, Any] | None:
        exp = self.retry(lambda: self.client.get_experiment(experiment_id))
        raw = exp.tags.get(LEASE_TAG)
        try:
            claim = json.loads(raw) if raw else None
        except ValueError:
            return None
        return claim if isinstance(claim, dict) else None

    def _write(self, experiment_id: str, released: bool = False) -> None:
        value = json.dumps({**self.me, "renewed": time.time(), **({"released": True} if released else {})},
                           sort_keys=True)
        self.retry(lambda: self.client.set_experiment_tag(experiment_id, LEASE_TAG, value))

    def _free(self, claim: dict[str, Any] | None) -> bool:
        if claim is None or claim.get("id") == self.me["id"] or claim.get("released"):
            return True
        if time.time() - float(claim.get("renewed") or 0) > LEASE_SECONDS:
            return True
        return claim.get("host") == self.me["host"] and not _alive(int(claim.get("pid") or 0))

    def claim(self, experiment_id: str, name: str) -> None:
        with self._lock:
            if experiment_id in self._held:
                return
            for _ in range(2):
                claim = self._read(experiment_id)
                if not self._free(claim):
                    raise TargetError(_busy(name, claim or {}))
                self._write(experiment_id)
                time.sleep(SETTLE_SECONDS)
                claim = self._read(experiment_id)
                if claim is not None and claim.get("id") == self.me["id"]:
                    break
            else:
                raise TargetError(_busy(name, claim or {}))
            self._held[experiment_id] = name
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew, name="mlflow-lease", daemon=True)
                self._renewer.start()

    def check(self, experiment_id: str) -> None:
        """Still ours? A claim taken over (ours expired while this process was stopped) ends the work here."""
        claim = self._read(experiment_id)
        if claim is not None and claim.get("id") != self.me["id"]:
            raise TargetError(_busy(self._held.get(experiment_id, experiment_id), claim))

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            with self._lock:
                held = list(self._held)
            for experiment_id in held:
                # A renewal that fails is tried again at the next tick; the claim lasts LEASE_SECONDS meanwhile.
                with contextlib.suppress(Exception):
                    self._write(experiment_id)

    def release(self) -> None:
        self._stop.set()
        with self._lock:
            held, self._held = list(self._held), {}
        for experiment_id in held:
            with contextlib.suppress(Exception):  # a claim not removed expires by itself
                if (self._read(experiment_id) or {}).get("id") == self.me["id"]:
                    self._remove(experiment_id)

    def _remove(self, experiment_id: str) -> None:
        if self.deletes_tags:
            try:
                self.client.delete_experiment_tag(experiment_id, LEASE_TAG)
                return
            except Exception:
                pass  # a server whose version we could not read may still lack the call: mark it released
        self._write(experiment_id, released=True)


def _busy(name: str, claim: dict[str, Any]) -> str:
    since = time.time() - float(claim.get("renewed") or time.time())
    return (f"another neptune-migrate (pid {claim.get('pid')} on {claim.get('host')}) is writing into the MLflow "
            f"experiment {name!r} (claim renewed {since:.0f} s ago); two writers would duplicate runs. Wait for it "
            f"to finish, or if it is gone, rerun in {max(0, LEASE_SECONDS - since):.0f} s")
