"""Scopes: FIFO across the parent, filtered streams, separate histories."""

from __future__ import annotations

from llama_isolate import CompletionEvent, LlamaParent


async def test_three_prompts_from_two_scopes_run_in_send_order_with_filtered_streams(parent: LlamaParent) -> None:
    a, b = parent.get_scope(), parent.get_scope()
    everything: list[str] = []
    only_a: list[str] = []
    only_b: list[str] = []
    finished: list[str] = []
    parent.stream.listen(everything.append)
    a.stream.listen(only_a.append)
    b.stream.listen(only_b.append)
    parent.completions.listen(lambda e: finished.append(e.prompt_id))
    a_events: list[CompletionEvent] = []
    a.completions.listen(a_events.append)

    a1 = await a.send_prompt("Name a fruit.", max_tokens=12)
    b1 = await b.send_prompt("Name a color.", max_tokens=12)
    a2 = await a.send_prompt("Name another one.", max_tokens=12)
    e_a1, e_b1, e_a2 = [await parent.wait_for_completion(p) for p in (a1, b1, a2)]

    assert finished == [a1, b1, a2]  # one by one, in send order
    # Each started after the previous ended (n_parallel=1, strict FIFO).
    assert e_a1.timings.total_s <= e_b1.timings.queued_s + 0.05
    assert "".join(only_a) == e_a1.text + e_a2.text
    assert "".join(only_b) == e_b1.text
    assert "".join(everything) == e_a1.text + e_b1.text + e_a2.text
    assert [e.prompt_id for e in a_events] == [a1, a2]
    assert {e_a1.scope_id, e_a2.scope_id} == {a.id}
    assert e_b1.scope_id == b.id
    assert a.messages == [
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": e_a1.text},
        {"role": "user", "content": "Name another one."},
        {"role": "assistant", "content": e_a2.text},
    ]
    assert b.messages == [
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": e_b1.text},
    ]
    assert parent.messages == []


async def test_a_queued_turn_sees_the_reply_to_the_turn_before_it(parent: LlamaParent) -> None:
    scope = parent.get_scope()
    first = await scope.send_prompt("Remember the word pineapple.", max_tokens=10)
    second = await scope.send_prompt("Which word?", max_tokens=10)  # sent before the first ran
    e1 = await parent.wait_for_completion(first)
    e2 = await parent.wait_for_completion(second)
    fresh = parent.get_scope()
    e3 = await parent.wait_for_completion(await fresh.send_prompt("Which word?", max_tokens=10))
    assert e1.success and e2.success
    # The second turn was formatted with the first turn and its reply.
    assert e2.prompt_tokens + e2.cached_tokens > e3.prompt_tokens + e3.cached_tokens + 10


async def test_a_disposed_scope_refuses_prompts_and_closes_its_streams(parent: LlamaParent) -> None:
    scope = parent.get_scope()
    await scope.dispose()
    await scope.dispose()  # idempotent
    assert scope.stream.closed
    assert scope.completions.closed
    try:
        await scope.send_prompt("hi")
    except Exception as exc:
        assert "disposed" in str(exc)
    else:
        raise AssertionError("a disposed scope accepted a prompt")
    pid = await parent.send_prompt("Still working?", max_tokens=4)
    assert (await parent.wait_for_completion(pid)).success
