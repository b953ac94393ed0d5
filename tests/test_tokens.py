"""Owner tokens: unique per claim across threads and forked processes."""

from __future__ import annotations

import os
import threading

import pytest

from django_idempotency.tokens import new_owner_token


def test_tokens_are_unique_across_threads_and_fit_the_column() -> None:
    per_thread, threads = 5_000, 8
    tokens: list[list[str]] = [[] for _ in range(threads)]

    def draw(bucket: list[str]) -> None:
        for _ in range(per_thread):
            bucket.append(new_owner_token())

    workers = [threading.Thread(target=draw, args=(bucket,)) for bucket in tokens]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)

    drawn = [token for bucket in tokens for token in bucket]
    assert len(drawn) == per_thread * threads
    assert len(set(drawn)) == len(drawn)
    assert all(1 <= len(token) <= 64 for token in drawn)  # IdempotencyRecord.owner_token


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_draws_tokens_no_other_process_draws() -> None:
    before = new_owner_token()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one token and leave at once
        try:
            os.write(write_end, new_owner_token().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child_token = pipe.read().decode()
    os.waitpid(pid, 0)
    after = new_owner_token()

    assert child_token
    # The prefix (all but the counter) is the process's own: the child's differs.
    assert child_token[:32] != before[:32]
    assert after[:32] == before[:32]
    assert len({before, after, child_token}) == 3
