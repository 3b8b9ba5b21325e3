"""The conversations the chat page keeps in the browser: what it reads back is checked, what it cannot read is
never overwritten, tabs share the store without undoing each other, and a full storage is said truthfully."""

from __future__ import annotations

import json

from playwright.sync_api import Page, expect

from .conftest import ORIGIN, PREFIX, ScriptedApi, answer, ask, loaded, reply

STORE = "llama-isolate.conversations"


def reload(page: Page) -> None:
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")


def seed(page: Page, value: str) -> None:
    """Puts `value` in the store before the page's first load (not again at a reload)."""
    page.add_init_script(
        f"""if (!sessionStorage.getItem("seeded")) {{
            sessionStorage.setItem("seeded", "1");
            localStorage.setItem({json.dumps(STORE)}, {json.dumps(value)});
        }}"""
    )


def two_tabs(blank: Page, *answers: dict[str, object]) -> Page:
    """Loads `blank` and a second tab of the same browser (returned), both answered from one script."""
    api = ScriptedApi(blank, *answers)
    loaded(blank, ORIGIN + PREFIX)
    other = blank.context.new_page()
    ScriptedApi(other).answers = api.answers
    loaded(other, ORIGIN + PREFIX)
    return other


def stored(page: Page) -> str | None:
    value = page.evaluate(f"localStorage.getItem({json.dumps(STORE)})")
    assert value is None or isinstance(value, str)
    return value


def test_what_is_read_back_is_checked_message_by_message(blank: Page) -> None:
    ScriptedApi(blank, reply("ok"))
    conversations = [
        {"id": "odd", "messages": [{"role": "tool", "content": "<img src=x onerror=window.pwned=1>"}]},
        {
            "id": "good",
            "title": "Kept",
            "messages": [
                {"role": "system", "content": "dropped"},
                {"role": "user", "content": "hi", "images": ["javascript:1", "data:image/png;base64,AA=="]},
                {"role": "assistant", "content": 5},
                {"role": "assistant", "content": "hello"},
            ],
        },
        {"id": "good", "title": "A second copy of an id", "messages": [{"role": "user", "content": "x"}]},
        "nonsense",
        None,
        {"__proto__": {"polluted": 1}, "id": "proto", "messages": []},
    ]
    seed(blank, json.dumps({"version": 1, "open": ["good", "good"], "conversations": conversations}))
    loaded(blank, ORIGIN + PREFIX)
    expect(blank.get_by_test_id("conversation").locator(".open")).to_have_text(["Kept"])
    expect(blank.get_by_test_id("transcript-0").locator(".msg .text")).to_have_text(["hi", "hello"])
    expect(blank.get_by_test_id("transcript-0").locator("img")).to_have_count(1)  # the data:image one only
    expect(blank.get_by_test_id("title-1")).to_have_text("New conversation")  # never one conversation twice
    assert blank.evaluate("window.pwned === undefined && ({}).polluted === undefined")


def test_a_newer_versions_store_is_left_alone(blank: Page) -> None:
    newer = json.dumps({"version": 2, "chats": [{"id": "x", "turns": ["from a newer page"]}]})
    seed(blank, newer)
    ScriptedApi(blank, reply("ok"))
    loaded(blank, ORIGIN + PREFIX)
    expect(blank.get_by_test_id("status")).to_contain_text("saved by a newer version of this page")
    ask(blank, 0, "Hi")
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    assert stored(blank) == newer


def test_an_unreadable_store_is_moved_aside_before_anything_is_kept(blank: Page) -> None:
    broken = '{"version": 1, "conversations": [{"id": "a", "messages": [{"role": "user", "cont'
    seed(blank, broken)
    ScriptedApi(blank, reply("ok"))
    loaded(blank, ORIGIN + PREFIX)
    expect(blank.get_by_test_id("status")).to_contain_text(f'moved aside to localStorage "{STORE}.unreadable"')
    assert blank.evaluate(f"localStorage.getItem({json.dumps(STORE + '.unreadable')})") == broken
    ask(blank, 0, "Hi")
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    reload(blank)
    expect(blank.get_by_test_id("conversation").locator(".open")).to_have_text(["Hi"])


def test_a_full_storage_is_said_truthfully_and_loses_no_kept_conversation(blank: Page) -> None:
    ScriptedApi(blank, reply("first answer"), reply("second answer"))
    loaded(blank, ORIGIN + PREFIX)
    ask(blank, 0, "Small")
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    before = stored(blank)
    blank.evaluate(  # fill what is left of this origin's storage, so that a bigger store cannot be written
        """() => {
            let size = 1 << 22;
            let n = 0;
            while (size >= 16) {
                try { localStorage.setItem(`filler${n}`, "x".repeat(size)); n += 1; } catch { size >>= 1; }
            }
        }"""
    )
    ask(blank, 0, "A long question " * 2000)
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    expect(blank.get_by_test_id("status")).to_have_text(
        "This browser's storage is off or full: the latest changes are not kept after a reload."
    )
    assert stored(blank) == before  # what was kept before is still there, whole


def test_two_tabs_share_the_conversations_and_undo_nothing(blank: Page) -> None:
    other = two_tabs(blank, reply("From the first tab"), reply("From the second tab"), reply("Again"))

    ask(blank, 0, "First tab")
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    expect(other.get_by_test_id("conversation").locator(".open")).to_have_text(["First tab"])  # seen at once
    ask(other, 1, "Second tab")  # written by a tab that had not read the first one's conversation itself
    expect(answer(other, 1)).to_have_attribute("data-state", "done")
    expect(blank.get_by_test_id("conversation").locator(".open")).to_have_text(["Second tab", "First tab"])

    # A rename and a setting made in one tab are taken in by the other, which then does not write them back.
    item = blank.get_by_test_id("conversation").filter(has_text="First tab")
    item.locator(".rename").click()
    blank.get_by_test_id("sidebar").locator(".rename-field").fill("Renamed")
    blank.get_by_test_id("sidebar").locator(".rename-field").press("Enter")
    blank.get_by_test_id("settings-toggle-0").click()
    blank.get_by_test_id("system-0").fill("Be brief.")
    expect(other.get_by_test_id("conversation").locator(".open")).to_have_text(["Second tab", "Renamed"])
    ask(other, 1, "More")  # the other tab writes the store again
    expect(answer(other, 1)).to_have_attribute("data-state", "done")
    reload(blank)
    expect(blank.get_by_test_id("conversation").locator(".open")).to_have_text(["Second tab", "Renamed"])
    expect(blank.get_by_test_id("system-0")).to_have_value("Be brief.")

    blank.once("dialog", lambda dialog: dialog.accept())
    blank.get_by_test_id("conversation").filter(has_text="Second tab").locator(".delete").click()
    expect(other.get_by_test_id("conversation").locator(".open")).to_have_text(["Renamed"])
    expect(other.get_by_test_id("transcript-1").locator(".msg")).to_have_count(0)  # the pane that showed it moved on


def test_a_tab_closed_or_reloaded_mid_turn_leaves_the_store_whole_for_the_others(blank: Page) -> None:
    other = two_tabs(blank, reply("A1"), {"hang": True}, {"hang": True})

    ask(blank, 0, "Q1")
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    blank.get_by_test_id("transcript-0").locator(".regenerate").click()  # no answer comes...
    expect(blank.get_by_test_id("pane-0")).to_have_attribute("data-state", "waiting")
    reload(blank)  # ...and the reload cut it off: the answer it was to replace is still there
    expect(blank.get_by_test_id("transcript-0").locator(".msg .text")).to_have_text(["Q1", "A1"])

    ask(blank, 0, "Q2")  # no answer comes, and the tab is closed
    expect(blank.get_by_test_id("pane-0")).to_have_attribute("data-state", "waiting")
    blank.close(run_before_unload=True)
    other.get_by_test_id("settings-toggle-1").click()
    other.get_by_test_id("temperature-1").fill("0.7")  # the other tab writes the store
    other.reload()
    expect(other.locator("body")).to_have_attribute("data-ready", "true")
    expect(other.get_by_test_id("transcript-0").locator(".msg .text")).to_have_text(["Q1", "A1", "Q2"])


def test_a_rename_made_elsewhere_during_a_turn_is_kept_when_the_turn_ends(blank: Page) -> None:
    other = two_tabs(blank, reply("A1"), {"hang": True})
    ask(blank, 0, "Q1")
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    ask(blank, 0, "Q2")
    expect(blank.get_by_test_id("pane-0")).to_have_attribute("data-state", "waiting")

    other.get_by_test_id("conversation").locator(".rename").click()
    other.get_by_test_id("sidebar").locator(".rename-field").fill("Renamed elsewhere")
    other.get_by_test_id("sidebar").locator(".rename-field").press("Enter")
    blank.get_by_test_id("stop-0").click()  # the turn ends here, with nothing back
    expect(blank.get_by_test_id("title-0")).to_have_text("Renamed elsewhere")
    reload(blank)
    expect(blank.get_by_test_id("conversation").locator(".open")).to_have_text(["Renamed elsewhere"])


def test_a_newer_version_arriving_while_the_page_is_open_is_not_overwritten(blank: Page) -> None:
    ScriptedApi(blank)
    loaded(blank, ORIGIN + PREFIX)
    newer = json.dumps({"version": 2, "chats": []})
    other = blank.context.new_page()
    ScriptedApi(other)
    other.goto(ORIGIN + PREFIX + "static/chat.css")  # the same origin, without the page's scripts
    other.evaluate(f"localStorage.setItem({json.dumps(STORE)}, {json.dumps(newer)})")
    expect(blank.get_by_test_id("status")).to_contain_text("saved by a newer version of this page")
    blank.get_by_test_id("settings-toggle-0").click()
    blank.get_by_test_id("temperature-0").fill("0.3")  # a change that would be written
    assert stored(blank) == newer
