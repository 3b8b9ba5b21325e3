"""PromptFlow against a fake worker: start order, one event per prompt, choices, faults, histories. No llama.cpp."""

from __future__ import annotations

import asyncio

from llama_isolate import PromptOptions
from llama_isolate import _protocol as protocol

from ..helpers.fake_worker import FakeParent, FakeScope, FakeWorker, reply_to


def finished(prompt_id: str, reason: protocol.FinishReason = "stop", **more: object) -> protocol.Finished:
    return protocol.Finished(prompt_id=prompt_id, finish_reason=reason, **more)  # type: ignore[arg-type]


async def test_prompts_start_in_send_order_as_slots_free() -> None:
    worker = FakeWorker(hold=True)
    parent = FakeParent(worker, slots=2)
    a, b, c = (parent.send(text, FakeScope(text)) for text in "abc")
    assert worker.submitted_ids == [a, b]  # two slots
    worker.answer(b)
    assert worker.submitted_ids == [a, b, c]
    worker.answer(a)
    worker.answer(c)
    assert [e.prompt_id for e in parent.events] == [b, a, c]  # events in the order the prompts ended


async def test_a_conversation_runs_one_prompt_at_a_time_and_others_pass_it() -> None:
    worker = FakeWorker(hold=True)
    parent = FakeParent(worker, slots=2)
    left, right = FakeScope("left"), FakeScope("right")
    l1, l2, r1 = parent.send("one", left), parent.send("two", left), parent.send("three", right)
    assert worker.submitted_ids == [l1, r1]  # l2 needs l1's reply first; r1 passes it
    worker.answer(l1)
    assert worker.submitted_ids == [l1, r1, l2]
    # l2 went down with l1's exchange before its own turn
    assert worker.submitted[-1].messages == (("user", "one"), ("assistant", reply_to("one")), ("user", "two"))
    worker.answer(r1)
    worker.answer(l2)
    assert {e.prompt_id for e in parent.events} == {l1, l2, r1}


async def test_every_prompt_gets_one_event_with_its_own_reply() -> None:
    parent = FakeParent(FakeWorker(), slots=2)
    scopes = [FakeScope(f"s{i}") for i in range(3)]
    sent = {parent.send(f"prompt {i}", scopes[i % 3]): f"prompt {i}" for i in range(9)}
    events = await asyncio.gather(*(parent.wait(p) for p in sent))
    assert [e.text for e in events] == [reply_to(text) for text in sent.values()]
    assert all(e.success and e.finish_reason == "stop" for e in events)
    assert sorted(e.prompt_id for e in parent.events) == sorted(sent)


async def test_a_finished_that_comes_after_its_scope_stopped_makes_no_second_event() -> None:
    worker = FakeWorker(hold=True)
    parent = FakeParent(worker)
    scope = FakeScope("s")
    prompt = parent.send("hello", scope)
    worker.deliver(protocol.Started(prompt), protocol.Tokens(prompt, "partial"))
    await parent.flow.stop_scope(scope)  # the fake ends it with Finished("cancelled"), as the worker does
    assert [(e.finish_reason, e.text) for e in parent.events_of(prompt)] == [("cancelled", "partial")]
    shown: list[str] = []
    parent.stream.listen(shown.append)
    worker.deliver(protocol.Tokens(prompt, " late"), finished(prompt, completion_tokens=2))  # what was on the wire
    assert len(parent.events_of(prompt)) == 1
    assert shown == []  # the late piece reaches no stream
    assert (await parent.wait(prompt)).finish_reason == "cancelled"


async def test_a_prompt_ended_by_a_dead_worker_ignores_a_late_finished() -> None:
    worker = FakeWorker(hold=True)
    parent = FakeParent(worker)
    prompt = parent.send("hello")
    parent.flow.end_running("error", "the worker process died", "worker_died")
    worker.deliver(finished(prompt))
    (event,) = parent.events_of(prompt)
    assert not event.success and event.error_code == "worker_died"


async def test_n_choices_come_together_in_one_event_whichever_ends_first() -> None:
    worker = FakeWorker(hold=True)
    parent = FakeParent(worker, slots=2)
    shown: list[str] = []
    parent.stream.listen(shown.append)
    prompt = parent.send("pick", n=2)
    worker.deliver(
        protocol.Started(prompt),
        protocol.Tokens(prompt, "zero"),
        protocol.Tokens(prompt, "one", choice=1),
        finished(prompt, completion_tokens=1, forks=1),
    )
    assert parent.events == []  # choice 1 has not ended yet
    worker.deliver(finished(prompt, "length", completion_tokens=1, choice=1))
    (event,) = parent.events
    assert event.text == "zero"
    assert [(c.index, c.text, c.finish_reason) for c in event.choices] == [(0, "zero", "stop"), (1, "one", "length")]
    assert shown == ["zero"]  # only the first choice streams


async def test_n_choices_from_the_fakes_script_are_all_in_the_event() -> None:
    parent = FakeParent(FakeWorker(), slots=3)
    event = await parent.wait(parent.send("pick", n=3))
    assert [c.index for c in event.choices] == [0, 1, 2]
    assert {c.text for c in event.choices} == {reply_to("pick")}


async def test_a_fault_fails_its_prompt_alone_and_stops_it_in_the_worker() -> None:
    worker = FakeWorker(hold=True)
    parent = FakeParent(worker, slots=2)
    bad, good = parent.send("bad", FakeScope("x")), parent.send("good", FakeScope("y"))
    parent.flow.fault(bad, "a reply could not be handled")
    assert worker.cancels == [protocol.Cancel((bad,), "cancelled")]
    worker.answer(good)
    await worker.idle()  # the worker's Finished("cancelled") for the failed prompt came too, late
    assert [(e.prompt_id, e.success, e.error_code) for e in parent.events] == [
        (bad, False, "internal_error"),
        (good, True, None),
    ]
    assert parent.events[0].error == "a reply could not be handled"


async def test_end_running_ends_the_running_prompts_and_leaves_the_waiting_ones_queued() -> None:
    worker = FakeWorker(hold=True)
    parent = FakeParent(worker, slots=1)
    running, waiting = parent.send("first", FakeScope("a")), parent.send("second", FakeScope("b"))
    parent.flow.end_running("error", "the worker process died", "worker_died")
    assert [(e.prompt_id, e.error_code) for e in parent.events] == [(running, "worker_died")]
    parent.flow.dispatch()  # a new worker is ready: the waiting prompt goes to it
    assert worker.submitted_ids == [running, waiting]
    worker.answer(waiting)
    assert (await parent.wait(waiting)).success


async def test_end_all_ends_waiting_and_running_prompts_once_each() -> None:
    worker = FakeWorker(hold=True)
    parent = FakeParent(worker, slots=1)
    sent = [parent.send(text, FakeScope(text)) for text in ("first", "second", "third")]
    parent.flow.end_all("error", "gone", "worker_died")
    parent.flow.end_all("error", "gone again", "worker_died")
    assert sorted(e.prompt_id for e in parent.events) == sorted(sent)
    assert all(e.error == "gone" for e in parent.events)
    assert worker.submitted_ids == sent[:1]


async def test_a_reply_joins_the_history_and_a_failed_prompt_takes_its_turn_back() -> None:
    worker = FakeWorker(hold=True)
    parent = FakeParent(worker)
    scope = FakeScope("s", messages=[{"role": "system", "content": "Be brief."}])
    ok = parent.send("hi", scope)
    worker.answer(ok)
    after_ok = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    after_ok.append({"role": "assistant", "content": reply_to("hi")})
    assert scope.messages == after_ok
    failed = parent.send("again", scope)
    assert scope.messages[-1] == {"role": "user", "content": "again"}  # the turn is in while it runs
    worker.deliver(protocol.Started(failed), protocol.Finished.failed(failed, "too long", "context_length_exceeded"))
    assert scope.messages == after_ok


async def test_the_parents_own_conversation_keeps_its_history_too() -> None:
    parent = FakeParent(FakeWorker())
    await parent.wait(parent.send("hi"))
    await parent.wait(parent.send("more"))
    assert [m["role"] for m in parent.default_scope.messages] == ["user", "assistant", "user", "assistant"]
    assert parent.default_scope.messages[-1]["content"] == reply_to("more")


async def test_a_conversation_of_its_own_is_answered_kept_nowhere_and_forgotten_by_the_worker() -> None:
    worker = FakeWorker()
    parent = FakeParent(worker)
    history = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"}]
    record = parent.flow.enqueue("second", None, PromptOptions(), history=list(history))
    parent.flow.dispatch()
    event = await parent.wait(record.id)
    (submit,) = worker.submitted
    assert submit.messages == (("user", "first"), ("assistant", "ok"), ("user", "second"))
    assert submit.scope_id == f"prompt-{record.id}" and event.scope_id is None
    await worker.idle()
    assert worker.commands[-1] == protocol.DropScope(submit.scope_id)  # its KV stays, owned by no one
    assert parent.default_scope.messages == []


async def test_cancel_prompt_ends_a_waiting_prompt_before_the_worker_sees_it() -> None:
    worker = FakeWorker(hold=True)
    parent = FakeParent(worker, slots=1)
    running, waiting = parent.send("first", FakeScope("a")), parent.send("second", FakeScope("b"))
    await parent.flow.cancel_prompt(waiting)
    assert [(e.prompt_id, e.finish_reason) for e in parent.events] == [(waiting, "cancelled")]
    await parent.flow.cancel_prompt(running)  # the fake ends it as the worker does: Finished("cancelled")
    assert [e.prompt_id for e in parent.events] == [waiting, running]
    assert worker.submitted_ids == [running]
