"""A filtered list page costs what it returns, not the tenant's history (both stores), and list
pages carry the params summary."""
from __future__ import annotations

from service.store.base import JobRecord, new_id


def _history(store, n_final: int, n_running: int = 2) -> list[str]:
    running = []
    for i in range(n_final + n_running):
        job = JobRecord(id=new_id("job"), tenant="t1", kind="colorize" if i % 2 else "anomaly.score",
                        params={"seed": i})
        store.create_job(job)
        store.claim(job.id, "w", 300)
        if i < n_final:
            store.finish(job.id, 1, "succeeded", result={})
        else:
            running.append(job.id)
    return running


def _cost(store, **filters) -> tuple[int, list]:
    """Redis: commands sent for one page. SQLite: virtual-machine steps of the page's query."""
    if hasattr(store, "commands_sent"):
        before = store.commands_sent
        page = store.list_jobs("t1", limit=20, **filters)
        return store.commands_sent - before, page
    steps = [0]

    def count():
        steps[0] += 1
        return 0

    db = store._db()
    db.set_progress_handler(count, 1)
    try:
        page = store.list_jobs("t1", limit=20, **filters)
    finally:
        db.set_progress_handler(None, 1)
    return steps[0], page


FILTERS = ({"status": "running"}, {"status": "queued"}, {"kind": "colorize", "status": "running"})


def test_filtered_page_cost_does_not_grow_with_history(store):
    running = _history(store, 30)
    small = [_cost(store, **f) for f in FILTERS]
    _history(store, 300, n_running=0)  # ten times the history, none of it running
    for filters, (cost_small, (jobs_small, _)) in zip(FILTERS, small):
        cost_big, (jobs_big, cursor) = _cost(store, **filters)
        assert [j.id for j in jobs_big] == [j.id for j in jobs_small] and cursor is None
        # equal for Redis (one index read + one pipeline of the page); SQLite's index seek may
        # take a few more steps in a deeper b-tree, never one per row of history
        assert cost_big <= cost_small * 1.3 + 10, (filters, cost_small, cost_big)
    assert sorted(j.id for j in small[0][1][0]) == sorted(running)


def test_unfiltered_pages_still_page_through_everything(store):
    _history(store, 45, n_running=0)
    seen, cursor = [], None
    while True:
        jobs, cursor = store.list_jobs("t1", cursor=cursor, limit=20, status="succeeded")
        seen += [j.id for j in jobs]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 45 and seen == sorted(seen, reverse=True)


def test_list_pages_carry_the_params_summary(store):
    points = [[1.0, 2.0]] * 500
    job = JobRecord(id=new_id("job"), tenant="t1", kind="colorize",
                    params={"prompt": "p", "strokes": [{"color": "#000000", "points": points}],
                            "webhook": {"url": "https://example.com/h", "events": ["succeeded"], "secret": "s" * 20}})
    store.create_job(job)
    (listed,), _ = store.list_jobs("t1")
    assert listed.params["strokes"] == [{"color": "#000000", "points": {"elided": "array", "length": 500}}]
    assert listed.params["webhook"]["secret"] == "***" and listed.params["prompt"] == "p"
    assert store.get_job(job.id).params["strokes"][0]["points"] == points


def test_versions_report_what_exists(store):
    a = JobRecord(id=new_id("job"), tenant="t1", kind="colorize", params={})
    store.create_job(a)
    store.claim(a.id, "w", 30)
    got = store.versions([a.id, "job_000000000000000000000000"])
    assert got == {a.id: (store.get_job(a.id).version, "running")}
