"""Runs: asynchronous executions of a version, retried on failure, with a log of every attempt.

A run is committed before its creator hears of it, then driven on the server's loop:
`submitted` (accepted) -> `pending` (queued) -> `runnable` (has a slot of its version)
-> `starting` (an instance is being made ready) -> `running` (the code runs) ->
`succeeded` | `failed`. A failed attempt goes back to `runnable` while retries are left.
Steps that follow each other at once share a commit: a run that finds a place goes from
`submitted` to `starting` in one, and an attempt that ends within a moment goes from `starting`
to its end in one (a longer one is written `running` meanwhile, as direct requests are).
A run of a version whose code is still building stays `submitted` until the build ends (told by
`Revisions.build_ended`), then goes on, or fails with the build's reason.
Each attempt is one direct request, so it also shows in the version's request list.

Any node of the cluster may run a run: the one that gets a slot of its version first claims it
(`runnable` sets its `owner`, compare-and-set, so one node wins, and only while the
cluster runs fewer of the version's runs than its `maximum_instances`) and fences every later
write by that claim. Runs a node accepts start there at once; a periodic pass of every node
also drives the queued runs of the others. On a node no other node lives beside, a run that waits
for a place is held there (`pending` with its `owner`): when a run of its version ends, its place
goes straight to the one held longest, whose attempt starts in a write submitted before the end's
and runs at once, without waiting for a claim's commit (`_hand_over`). What a dead node held is
given back by `_give_back`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ARRAY, Connection, Dialect, String, Table, and_, any_, bindparam, func, or_, select, text, update

from modelbay.core.activity import Activity
from modelbay.core.background import Background
from modelbay.core.hooks import Hook
from modelbay.core.clock import utcnow
from modelbay.core.deployments import Deployments, Target
from modelbay.core.errors import InvalidInput, NotFound, StatusChanged, Unavailable, last_line
from modelbay.core.fields import check_data
from modelbay.core.journal import LOG_LINES, Journal, split_lines
from modelbay.core.nodes import Nodes, owned_by
from modelbay.core.requests import Requests
from modelbay.core.revisions import build_failure
from modelbay.core.run_places import RunPlaces
from modelbay.core.scheduler import Scheduler
from modelbay.core.states import RUN, Move, RunStatus, VersionStatus, move
from modelbay.runtime import wire
from modelbay.runtime.base import CallTimedOut, InstanceStartFailed
from modelbay.store.db import Database, Insert, lock_until_commit, run_writes
from modelbay.store.driver import DriverStatement, driver_cursor, insert_rows
from modelbay.store.tables import RUNS_CLAIMED, RunRow

log = logging.getLogger(__name__)

RUNS: Table = RunRow.__table__  # type: ignore[assignment]

#: How long one attempt may run, and how long its instance may take to become ready.
ATTEMPT_TIMEOUT_S = 3600
START_TIMEOUT_S = 600

RETRY_COUNT_DEFAULT = 5
RETRY_COUNT_MAX = 9

#: Runs one page of a list holds.
PAGE_SIZE = 20

#: How often a node looks for queued runs it does not drive yet (accepted by another node, given back).
PICK_UP_PERIOD_S = 2.0

#: The statuses of a run a node has claimed: `owner` names the node.
CLAIMED = (RunStatus.RUNNABLE, RunStatus.STARTING, RunStatus.RUNNING)
QUEUED = (RunStatus.SUBMITTED, RunStatus.PENDING)

STOPPED_DURING_LAST_ATTEMPT = "The server stopped during the last attempt"


def check_retry_count(value: Any) -> int:
    if value is None:
        return RETRY_COUNT_DEFAULT
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= RETRY_COUNT_MAX:
        raise InvalidInput(f"retry_count must be an integer from 0 to {RETRY_COUNT_MAX}")
    return value


def check_environment(value: Any, what: str = "environment") -> dict[str, str]:
    """Environment variables as a dict of names to strings; raises `InvalidInput` otherwise."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be an object of variable names to values")
    result = {}
    for name, item in value.items():
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            raise InvalidInput(f"{what}: {name!r} is not a valid variable name")
        if isinstance(item, (dict, list)) or item is None:
            raise InvalidInput(f"{what}: the value of {name} must be a string or a number")
        text = str(item).lower() if isinstance(item, bool) else str(item)
        if "\0" in text:
            raise InvalidInput(f"{what}: the value of {name} holds a NUL character")
        result[name] = text
    return result


def call_input(target: Target, body: Any, environment: dict[str, str]) -> tuple[Any, dict[str, Any]]:
    """The data and call context that hand `body` (JSON) to a version's code.

    Handler-style code gets it as an `application/json` request body; Deployment-class code
    gets it as its input (structured: the object; plain: the JSON text, or the string itself).
    """
    context: dict[str, Any] = {wire.ENVIRONMENT_KEY: environment} if environment else {}
    if target.handler:
        context[wire.HTTP_KEY] = {"content_type": "application/json", "encoding": "text"}
        return ("" if body is None else orjson.dumps(body).decode()), context
    if target.input_type == "structured":
        return body, context
    return (body if isinstance(body, str) else orjson.dumps(body).decode()), context


def _claimed_count() -> Any:
    """How many runs of the version `version_id` nodes other than `node_id` claimed: counted in the
    partial index of claimed runs (a few entries per version), which the statuses written out as its
    condition let the database use. Through the index of all statuses, a count walked every
    version's claimed runs, and the entries of runs claimed since the last vacuum: thousands at
    1,000 runs/s."""
    return select(func.count()).select_from(RUNS).where(
        RUNS.c.version_id == bindparam("version_id"), text(RUNS_CLAIMED),
        RUNS.c.owner != bindparam("node_id")).scalar_subquery()


# The claims' reads are planned at each run: a plan kept from when the table was nearly empty scans every run.

@functools.cache
def _claim_reads(dialect: Dialect) -> DriverStatement:
    """What a claim decides on, in one statement compiled once: how many runs of the version other
    nodes claimed, and how many attempts the run made."""
    attempts = select(RUNS.c.attempts).where(RUNS.c.id == bindparam("run_id")).scalar_subquery()
    return DriverStatement(select(_claimed_count(), attempts), dialect, planned_each_run=True)


@functools.cache
def _joined_claim_reads(dialect: Dialect) -> DriverStatement:
    """`_claim_reads` for several runs (PostgreSQL): each one's attempts, with the count of the runs
    other nodes claimed."""
    return DriverStatement(
        select(RUNS.c.id, RUNS.c.attempts, _claimed_count())
        .where(RUNS.c.id == any_(bindparam("run_ids", type_=ARRAY(String)))),
        dialect, planned_each_run=True)


def starting_line(attempt: int, total: int) -> str:
    return f"Attempt {attempt} of {total} is starting"


class Claim:
    """A queued run claimed for a node, with its next attempt started (`Runs._claim`): a write for
    the committer whose result is the attempt's number, or None when the cluster runs the version's
    maximum of runs already (the run is then `pending`).

    Claims of one version take turns across nodes (a lock until the commit, then a count of the
    runs other nodes claimed). A node counts its own by the places it holds (`held`, this run's
    included): in the store, a run of its own that just ended, or just started in another's place
    (`Runs._hand_over`), may not be written yet. On PostgreSQL the claims of one version in a
    batch join (`run_joined`): one lock, one read and one statement of moves for all."""

    __slots__ = ("run_id", "old", "version_id", "maximum", "node_id", "total", "held", "joins", "row")

    def __init__(self, run_id: str, old: RunStatus, version_id: str, maximum: int, node_id: str, total: int,
                 held: int) -> None:
        self.run_id, self.old, self.version_id, self.maximum = run_id, old, version_id, maximum
        self.node_id, self.total, self.held = node_id, total, held
        self.joins = ("claim", version_id, maximum, node_id)
        self.row = (RUN.name, run_id)

    def __call__(self, conn: Connection) -> int | None:
        lock_until_commit(conn, f"runs:{self.version_id}")
        [(others, attempts)] = _claim_reads(conn.dialect).rows(driver_cursor(conn), {
            "version_id": self.version_id, "node_id": self.node_id, "run_id": self.run_id})
        [attempt] = _claimed(conn, [self], others, {self.run_id: attempts})
        return attempt

    @staticmethod
    def run_joined(conn: Connection, claims: list[Claim]) -> list[int | None]:
        if conn.dialect.name == "sqlite":  # no lock to share, and each read costs no round trip
            return [claim(conn) for claim in claims]
        version_id = claims[0].version_id
        lock_until_commit(conn, f"runs:{version_id}")
        rows = _joined_claim_reads(conn.dialect).rows(driver_cursor(conn), {
            "version_id": version_id, "node_id": claims[0].node_id, "run_ids": [claim.run_id for claim in claims]})
        return _claimed(conn, claims, rows[0][2] if rows else 0, {run_id: attempts for run_id, attempts, _ in rows})


def _claimed(conn: Connection, claims: list[Claim], others: int, attempts: dict[str, int | None]) -> list[int | None]:
    """Each claim decided, and written: the attempts started, or None for the runs that wait (the
    runs other nodes claimed and the places its node holds are more than the maximum)."""
    results: list[int | None] = []
    moves: list[Move] = []
    for claim in claims:
        path = (RunStatus.PENDING,) if claim.old is RunStatus.SUBMITTED else ()
        if others + claim.held > claim.maximum:
            if path:
                moves.append(Move(RUN, claim.run_id, claim.old, RunStatus.PENDING, {}))
            results.append(None)
            continue
        attempt = (attempts.get(claim.run_id) or 0) + 1  # attempts made before it was given back to the queue count
        lines = Journal.rows(claim.run_id, [starting_line(attempt, claim.total)])
        moves.append(Move(RUN, claim.run_id, claim.old, RunStatus.STARTING,
                          {"owner": claim.node_id, "attempts": attempt}, via=(*path, RunStatus.RUNNABLE),
                          inserts=Insert(LOG_LINES, lines)))
        results.append(attempt)
    run_writes(conn, moves)
    return results


def is_building(target: Target) -> bool:
    """Whether the version has no code yet but a build that may give it some."""
    return target.revision_id is None and target.status == VersionStatus.BUILDING


@dataclass(frozen=True)
class NewRun:
    """What a creator asks for; checked by `Runs.create`."""

    input_data: Any
    output_template: Any
    retry_count: int
    distribution: int | None
    environment: dict[str, str]
    model_alias: str | None


class Runs:
    """Creates runs and drives them to the end, one task per run; `start` picks up queued runs."""

    def __init__(self, db: Database, deployments: Deployments, requests: Requests, scheduler: Scheduler,
                 journal: Journal, nodes: Nodes, activity: Activity | None = None) -> None:
        self._db = db
        self._activity = activity or Activity()  # where the runs that end here are counted
        self._nodes = nodes
        self._deployments = deployments
        self._requests = requests
        self._scheduler = scheduler
        self._journal = journal
        self._places: dict[str, RunPlaces] = {}  # version -> the places its runs take on this node
        self._full_until: dict[str, float] = {}  # version -> no claim tried before then: the cluster runs its maximum
        self._background = Background("runs")  # one task per run driven, and journal writes
        self._closing = False  # the server is stopping: no new attempt starts
        self._driving: set[str] = set()  # runs with a task driving them
        self._loop: asyncio.AbstractEventLoop | None = None  # set by `start`: build ends are told on threads
        self._wake = asyncio.Event()  # the pick-up pass runs at once
        #: Told of each status a run takes, once written (tests and benches observe runs with it).
        self.status_changed: Hook[[str, RunStatus]] = Hook("runs: status changed")
        nodes.add_recoverer(self._give_back, "runs")
        nodes.recovered.add(self._wake.set)

    # --- creating ----------------------------------------------------------------------------

    async def create(self, target: Target, new: NewRun) -> RunRow:
        """Commit a run of `target`, then start driving it; returns the row as committed.

        A run of a version whose code is building is accepted and waits for the build. Raises
        `Unavailable` when the version has no built code otherwise, `InvalidInput` for input its
        code cannot take.
        """
        building = is_building(target)
        if not building:
            self._deployments.serving_target_check(target)
        if not target.handler and target.input_type == "structured":
            check_data(target.input_type, target.input_fields, new.input_data)
        now = utcnow()
        row = {
            "id": secrets.token_hex(8),
            "project_id": target.project_id,
            "deployment_id": target.deployment_id,
            "version_id": target.version_id,
            "status": RunStatus.SUBMITTED.value,
            "input_data": new.input_data,
            "output_template": new.output_template,
            "retry_count": new.retry_count,
            "attempts": 0,
            "distribution": new.distribution,
            "environment": new.environment,
            "model_alias": new.model_alias,
            "error_message": None,
            "created_at": now,
            "modified_at": now,
        }
        if building:
            journal = self._journal.rows(row["id"], [
                "The version's code is still building; the run starts when the build ends"])

            def write(conn: Connection) -> None:
                insert_rows(conn, RUNS, [row])
                self._journal.write(conn, journal)

            await self._db.committer.submit_async(write)
        else:  # with the batch's other inserts into runs: one statement for all
            await self._db.insert_committer.submit_async(Insert(RUNS, [row]))
        created = RunRow(**row)
        self._drive_soon(created.id, created)
        return created

    # --- reading -----------------------------------------------------------------------------

    def get(self, deployment_id: str, run_id: str) -> RunRow:
        """Raises `NotFound` unless the run exists in this deployment."""
        with self._db.read() as session:
            row = session.get(RunRow, run_id)
        if row is None or row.deployment_id != deployment_id:
            raise NotFound("run", run_id)
        return row

    def page(
        self, deployment_id: str, *, after: tuple[datetime, str] | None, oldest_first: bool, limit: int = PAGE_SIZE
    ) -> tuple[list[RunRow], bool]:
        """One page of a deployment's runs after the cursor (created_at, id); and whether more follow.

        Keyset paging: runs created while a client pages never shift or repeat entries.
        """
        query = select(RunRow).where(RunRow.deployment_id == deployment_id)
        if after is not None:
            at, run_id = after
            if oldest_first:
                query = query.where(or_(RunRow.created_at > at, and_(RunRow.created_at == at, RunRow.id > run_id)))
            else:
                query = query.where(or_(RunRow.created_at < at, and_(RunRow.created_at == at, RunRow.id < run_id)))
        if oldest_first:
            query = query.order_by(RunRow.created_at, RunRow.id)
        else:
            query = query.order_by(RunRow.created_at.desc(), RunRow.id.desc())
        with self._db.read() as session:
            rows = list(session.scalars(query.limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    # --- driving -----------------------------------------------------------------------------

    def start(self) -> None:
        """Give back the runs a server left claimed before nodes existed, then drive queued runs of
        every node, now and every `PICK_UP_PERIOD_S`."""
        self._loop = asyncio.get_running_loop()
        with self._db.write() as session:
            # No node claims a run without naming itself: a claimed run with no owner is a
            # server's from before the cluster, gone since.
            self._give_back_where(session.connection(), RUNS.c.owner.is_(None))
        self._background.every(PICK_UP_PERIOD_S, self._pick_up, "pick-up", wake=self._wake)

    def _give_back(self, conn: Connection, node_ids: list[str]) -> int:
        """A recoverer (`Nodes`): the runs dead nodes held are queued again, or fail when their
        last attempt was under way (its instance went with the node); those they held pending, any
        node may run."""
        held = conn.execute(update(RUNS).where(RUNS.c.owner.in_(node_ids), RUNS.c.status == RunStatus.PENDING.value)
                            .values(owner=None)).rowcount
        return held + self._give_back_where(conn, RUNS.c.owner.in_(node_ids))

    def _give_back_where(self, conn: Connection, owned: Any) -> int:
        rows = conn.execute(select(RUNS.c.id, RUNS.c.status, RUNS.c.attempts, RUNS.c.retry_count).where(
            owned, text(RUNS_CLAIMED))).all()
        given_back = 0
        for run_id, status, attempts, retry_count in rows:
            old = RunStatus(status)
            try:
                if old is not RunStatus.RUNNABLE and attempts > retry_count:
                    move(conn, RUN, run_id, old, RunStatus.FAILED, error_message=STOPPED_DURING_LAST_ATTEMPT)
                    lines = [f"{STOPPED_DURING_LAST_ATTEMPT}; the run failed"]
                else:
                    move(conn, RUN, run_id, old, RunStatus.PENDING, owner=None)
                    lines = ["The server restarted; the run is queued again"]
            except StatusChanged:
                continue  # it moved since the read: its node is alive after all, or it ended
            self._journal.write(conn, self._journal.rows(run_id, lines))
            given_back += 1
        return given_back

    async def _pick_up(self) -> None:
        """Drive the queued runs no task here drives: accepted by another node, or given back."""
        queued = await asyncio.to_thread(self._queued)
        for run_id in queued:
            self._drive_soon(run_id)

    def _queued(self) -> list[str]:
        with self._db.read() as session:
            ids = session.scalars(select(RUNS.c.id).where(
                RUNS.c.status.in_([s.value for s in QUEUED]), self._ours()).order_by(RUNS.c.created_at)).all()
        return [run_id for run_id in ids if run_id not in self._driving]

    def _ours(self) -> Any:
        """Of queued runs: those no other node holds (`_drive`)."""
        return owned_by(RUNS.c.owner, [None, self._nodes.id])

    def build_ended(self, version_id: str) -> None:
        """A reaction to `Revisions.build_ended` (on the build's thread): drive the runs that waited."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._drive_waiting, version_id)

    def _drive_waiting(self, version_id: str) -> None:
        with self._db.read() as session:
            waiting = session.scalars(select(RUNS.c.id).where(
                RUNS.c.version_id == version_id,
                RUNS.c.status.in_([RunStatus.SUBMITTED.value, RunStatus.PENDING.value]), self._ours(),
            )).all()
        for run_id in waiting:
            self._drive_soon(run_id)

    def _drive_soon(self, run_id: str, row: RunRow | None = None) -> None:
        """Start a task driving the run, unless one already does; `row`: the run as just committed."""
        if run_id not in self._driving and not self._closing:
            self._driving.add(run_id)
            self._background.spawn(self._drive(run_id, row), name=f"run-{run_id}")

    async def close(self, grace_s: float = 30.0) -> None:
        """Let running attempts finish, for up to `grace_s`; runs that wait stay queued for any node
        (what this node still holds, `Nodes.close` gives back)."""
        self._closing = True
        await self._background.close(grace_s)

    async def _move(self, run_id: str, old: RunStatus, *new: RunStatus, lines: Iterable[str] = (),
                    fence: str | None = None, **values: Any) -> None:
        """Change a run's status through each of `new` in turn, in one commit with the log lines
        that tell of it (`values` go with the last). `fence`: the node that claimed the run; raises
        `StatusChanged` if it holds it no more."""
        await self._move_soon(run_id, old, *new, lines=lines, fence=fence, **values)

    def _move_soon(self, run_id: str, old: RunStatus, *new: RunStatus, lines: Iterable[str] = (),
                   fence: str | None = None, **values: Any) -> asyncio.Future[None]:
        """`_move`, submitted now: what is submitted after it commits with it or later, so a caller
        may go on before the returned future ends (it raises what `_move` raises)."""
        rows = self._journal.rows(run_id, lines)
        write = Move(RUN, run_id, old, new[-1], values, via=new[:-1], fence=fence,
                     inserts=Insert(LOG_LINES, rows) if rows else None)

        def told(committed: asyncio.Future[None]) -> None:  # before the awaiting task goes on
            if not committed.cancelled() and committed.exception() is None:
                for status in new:
                    self.status_changed(run_id, status)

        committed: asyncio.Future[None] = self._db.committer.submit_async(write)
        committed.add_done_callback(told)
        return committed

    async def _claim(self, run_id: str, old: RunStatus, target: Target, node_id: str, total: int,
                     held: int) -> int | None:
        """Claim a queued run for this node and start its next attempt, in one commit; returns the
        attempt's number, or None when the cluster runs the version's maximum of runs already (the
        run is then `pending`). Raises `StatusChanged` when another node claimed it."""
        path = [RunStatus.PENDING] if old is RunStatus.SUBMITTED else []
        attempt = await self._db.committer.submit_async(
            Claim(run_id, old, target.version_id, max(target.maximum_instances, 1), node_id, total, held))
        for status in path if attempt is None else [*path, RunStatus.RUNNABLE, RunStatus.STARTING]:
            self.status_changed(run_id, status)
        return attempt

    def _holding_back(self, target: Target) -> bool:
        """Whether no run of the version is claimed here now: the server is stopping, or the cluster
        ran the version's maximum of runs a moment ago."""
        return self._closing or self._full_until.get(target.version_id, 0.0) > time.monotonic()

    def _places_of(self, target: Target) -> RunPlaces:
        """Runs of one version run at most `maximum_instances` at a time on this node; the rest wait `pending`."""
        places = self._places.get(target.version_id)
        if places is None:
            places = self._places[target.version_id] = RunPlaces(max(target.maximum_instances, 1))
        return places

    def _hand_over(self, places: RunPlaces, node_id: str) -> bool:
        """Give the place of a run that ends to the first run waiting for one, when this node holds
        that run `pending` (`_drive`): its attempt starts in a write submitted now, before the ending
        run's last one, so that no commit counts one run fewer than the version runs (another node
        could claim the place meanwhile; one more, for a moment, when they land in two commits). The
        run starts at once, while the write commits. Returns whether it did.

        Only while no other node lives: a node handing its places on would keep them as long as it
        has runs waiting, and the runs other nodes accepted would wait behind all of those."""
        waiting: RunRow | None = places.first_waiting()
        if waiting is None or self._closing or self._nodes.others_live:
            return False
        attempt, total = (waiting.attempts or 0) + 1, waiting.retry_count + 1
        places.hand_over((attempt, self._move_soon(
            waiting.id, RunStatus.PENDING, RunStatus.RUNNABLE, RunStatus.STARTING,
            lines=[starting_line(attempt, total)], fence=node_id, attempts=attempt)))
        return True

    async def _drive(self, run_id: str, row: RunRow | None = None) -> None:
        status = RunStatus.SUBMITTED
        node_id: str | None = None  # the node's id when it claimed the run
        try:
            if row is None:
                with self._db.read() as session:
                    row = session.get(RunRow, run_id)
            if row is None or RunStatus(row.status) not in QUEUED or row.owner not in (None, self._nodes.id):
                return  # ended, or another node runs it or holds it
            status = RunStatus(row.status)
            target = self._deployments.target_of_version(row.version_id)
            if target.revision_id is None:
                if is_building(target):
                    # No await from the check to the end of the task: a build that ends meanwhile
                    # finds the run undriven, and `build_ended` drives it again.
                    return
                failure = build_failure(self._db, row.version_id)
                if failure is not None:
                    raise Unavailable(failure)
                self._deployments.serving_target_check(target)  # raises: no built code
            places = self._places_of(target)
            here = self._nodes.id
            held = status is RunStatus.PENDING and row.owner == here  # by this node, for `_hand_over`
            if status is RunStatus.SUBMITTED and (places.full() or self._holding_back(target)):
                # It waits for a place: say so, and on a node alone, hold it here (`_hand_over`).
                held = not self._nodes.others_live
                await self._move(run_id, status, RunStatus.PENDING, owner=here if held else None)
                status = RunStatus.PENDING
            handed = await places.take(row if held else None)  # at once when one was free: nothing changed
            handed_over = False
            started: asyncio.Future[None] | None = None  # the write that started the attempt handed over

            def hand_over() -> None:
                nonlocal handed_over
                handed_over = self._hand_over(places, here)

            try:
                node_id = here
                if handed is not None:
                    attempt, started = handed
                elif self._holding_back(target):
                    return  # pending: another node, the next pass, or the next start runs it
                else:
                    # The claim: of the nodes that have a place for it, the first one runs it.
                    attempt = await self._claim(run_id, status, target, node_id, row.retry_count + 1, places.taken)
                    if attempt is None:
                        self._full_until[target.version_id] = time.monotonic() + PICK_UP_PERIOD_S / 2
                        return
                try:
                    status, ending = await self._attempts(row, attempt, node_id, hand_over)
                finally:
                    self._full_until.pop(target.version_id, None)  # a place just came free: the next run here tries
            finally:
                if not handed_over:
                    places.give_back()  # the next run waiting here claims it
            if started is not None:
                await started  # raises StatusChanged when the run is not this node's to run
            await ending
            if status in RUN.terminal:
                self._ended(row, status)
        except asyncio.CancelledError:
            raise  # the server is stopping: what it holds, it gives back
        except StatusChanged:
            # Another node moved it first: it claimed the run, or recovered it from this node.
            log.info("run %s went on without this node (it is now %s)", run_id, self._status(run_id))
        except Exception as exc:
            if isinstance(exc, (NotFound, Unavailable)):
                message = exc.message
            else:
                log.exception("run %s crashed", run_id)
                message = f"The run crashed: {exc}"
            if await self._fail(run_id, message, node_id) and row is not None:
                self._ended(row, RunStatus.FAILED, message)
        finally:
            self._driving.discard(run_id)

    def _status(self, run_id: str) -> str | None:
        with self._db.read() as session:
            return session.scalar(select(RUNS.c.status).where(RUNS.c.id == run_id))

    async def _fail(self, run_id: str, message: str, node_id: str | None) -> bool:
        """End a run as failed from whatever status it has now (unless it has ended); returns whether
        it did. `node_id`: the claim it was driven under, if it got that far; a run no longer held
        under it is left alone."""
        current = self._status(run_id)
        if current is None or RunStatus(current) in RUN.terminal:
            return False
        try:
            await self._move(run_id, RunStatus(current), RunStatus.FAILED, lines=[message], error_message=message,
                             fence=node_id)
        except StatusChanged:
            return False
        return True

    def _ended(self, row: RunRow, status: RunStatus, why: str | None = None) -> None:
        """Count a run that ended here, and log it (a success at DEBUG: like a request's, it is
        counted in the metrics, not worth an operator's look)."""
        self._activity.count("runs", row.version_id, status.value)
        if status is RunStatus.SUCCEEDED:
            log.debug("run %s succeeded", row.id, extra={"run_id": row.id, "event": "run succeeded"})
        else:
            log.warning("run %s failed: %s", row.id, last_line(why or self._error_of(row.id)),
                        extra={"run_id": row.id, "event": "run failed"})

    def _error_of(self, run_id: str) -> str | None:
        with self._db.read() as session:
            return session.scalar(select(RUNS.c.error_message).where(RUNS.c.id == run_id))

    async def _attempts(self, row: RunRow, attempt: int, node_id: str,
                        before_end: Callable[[], None]) -> tuple[RunStatus, asyncio.Future[None]]:
        """Run attempts from number `attempt` (its run is `starting`) until one succeeds or the
        retries are used up; returns the final status, and its move, submitted (see `_move_soon`)
        right after `before_end` ran. Every write is fenced by the claim of `node_id`."""
        run_id, total = row.id, row.retry_count + 1
        while True:
            target = self._deployments.serving_target_check(self._deployments.target_of_version(row.version_id))
            error: str | None
            printed: list[str] = []
            passed: tuple[RunStatus, ...] = (RunStatus.STARTING,)  # the statuses the end moves it from, in turn
            try:
                await self._scheduler.make_ready(target, START_TIMEOUT_S)
            except (InstanceStartFailed, CallTimedOut) as exc:
                error = f"The code could not start: {getattr(exc, 'message', exc)}"
            else:
                passed, error, printed = await self._attempt(run_id, row, target, node_id)
            told = f"Attempt {attempt} of {total}"
            if error is None or attempt >= total:
                before_end()
            if error is None:
                return RunStatus.SUCCEEDED, self._move_soon(
                    run_id, *passed, RunStatus.SUCCEEDED, lines=[*printed, f"{told} succeeded"], fence=node_id)
            if attempt >= total:
                return RunStatus.FAILED, self._move_soon(
                    run_id, *passed, RunStatus.FAILED, lines=[*printed, f"{told} failed: {error}"], fence=node_id,
                    error_message=error)
            retrying = self._move_soon(
                run_id, *passed, RunStatus.RUNNABLE,
                lines=[*printed, f"{told} failed: {error}; retrying"], fence=node_id)
            if self._closing:
                return RunStatus.RUNNABLE, retrying  # `Nodes.close` gives it back
            await retrying
            attempt += 1
            await self._move(run_id, RunStatus.RUNNABLE, RunStatus.STARTING,
                             lines=[starting_line(attempt, total)], fence=node_id, attempts=attempt)

    async def _attempt(self, run_id: str, row: RunRow, target: Target,
                       node_id: str) -> tuple[tuple[RunStatus, ...], str | None, list[str]]:
        """One execution of a `starting` run: the statuses its end moves it from (as for direct
        requests, an attempt still running after a moment is written `running` meanwhile; a quicker
        one goes from `starting` through `running` to its end in one commit), None on success else
        why it failed, and the lines the code printed."""
        running: asyncio.Task[None] | None = None

        def record_running() -> None:
            nonlocal running
            running = asyncio.ensure_future(self._move(run_id, RunStatus.STARTING, RunStatus.RUNNING, fence=node_id))

        delayed = self._requests.after_a_moment.add(record_running)
        try:
            error, printed = await self._call(run_id, row, target)
        finally:
            self._requests.after_a_moment.cancel(delayed)
        if running is None:
            return (RunStatus.STARTING, RunStatus.RUNNING), error, printed
        await running  # raises StatusChanged when the run is no longer this node's
        return (RunStatus.RUNNING,), error, printed

    async def _call(self, run_id: str, row: RunRow, target: Target) -> tuple[str | None, list[str]]:
        """The attempt's request: None on success, else why it failed; and the lines the code printed."""
        data, context = call_input(target, row.input_data, dict(row.environment or {}))
        try:
            record = await self._requests.direct(
                target, data, timeout=ATTEMPT_TIMEOUT_S, origin={"created_by": "run", "run_id": run_id},
                context=context, wait_recorded=False,  # the attempt's end commits with its record
            )
        except InvalidInput as exc:
            return exc.message, []
        printed = split_lines(record.logs)
        if record.status != "completed":
            return record.error_message or f"The attempt ended {record.status}", printed
        if target.handler and isinstance(record.result, str):
            try:
                status_code = int(orjson.loads(record.result).get("status_code", 200))
            except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                status_code = 200
            if status_code >= 400:
                return f"The handler answered with status {status_code}", printed
        return None, printed
