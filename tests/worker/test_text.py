"""Detokenization and stop strings, without a model."""

from __future__ import annotations

from llama_isolate._worker.text import Detokenizer


def feed_all(detok: Detokenizer, pieces: list[bytes]) -> tuple[list[str], bool]:
    out: list[str] = []
    for piece in pieces:
        text, stopped = detok.feed(piece)
        if text:
            out.append(text)
        if stopped:
            return out, True
    rest = detok.flush()
    if rest:
        out.append(rest)
    return out, False


def test_a_character_split_across_tokens_is_emitted_whole() -> None:
    snowman = "☃".encode()
    out, _ = feed_all(Detokenizer(()), [b"a", snowman[:1], snowman[1:2], snowman[2:] + b"b"])
    assert out == ["a", "☃b"]
    assert all("\ufffd" not in piece for piece in out)


def test_invalid_bytes_become_replacement_characters_not_errors() -> None:
    out, _ = feed_all(Detokenizer(()), [b"ok", b"\xff", b"!"])
    assert "".join(out) == "ok\ufffd!"


def test_a_stop_string_cuts_the_text_and_is_not_emitted() -> None:
    out, stopped = feed_all(Detokenizer(("END",)), [b"hello E", b"N", b"D more"])
    assert stopped
    assert "".join(out) == "hello "


def test_a_partial_stop_string_is_held_back_then_released() -> None:
    detok = Detokenizer(("END",))
    assert detok.feed(b"abc EN") == ("abc ", False)
    assert detok.feed(b"TRY") == ("ENTRY", False)
    assert detok.flush() == ""


def test_held_back_text_comes_out_at_the_end() -> None:
    out, stopped = feed_all(Detokenizer(("###",)), [b"x#", b"#"])
    assert not stopped
    assert "".join(out) == "x##"


def test_the_earliest_of_several_stop_strings_wins() -> None:
    out, stopped = feed_all(Detokenizer(("world", "lo")), [b"hello world"])
    assert stopped
    assert "".join(out) == "hel"


def test_a_character_cut_off_by_the_end_is_dropped_not_replaced() -> None:
    llama = "🦙".encode()
    out, _ = feed_all(Detokenizer(()), [b"ok ", llama[:2]])  # max_tokens came between its bytes
    assert "".join(out) == "ok "


def test_a_tool_call_marker_splits_the_reply_even_across_pieces() -> None:
    detok = Detokenizer(("STOP",), ("<tool_call>",))
    shown = [detok.feed(piece.encode())[0] for piece in ("Sure <to", "ol_c", "all>\n{", '"name": "f"}')]
    assert "".join(shown) == "Sure "
    assert detok.call_text == '<tool_call>\n{"name": "f"}'


def test_an_abandoned_call_goes_back_to_the_reply_and_the_marker_is_watched_again() -> None:
    detok = Detokenizer((), ("<tool_call>",))
    assert detok.feed(b"a <tool_call></") == ("a ", False)
    assert detok.abandon_call() == ("<tool_call></", False)
    assert detok.call_text is None
    assert detok.feed(b"b <tool_") == ("b ", False)  # a possible marker is held back again
    assert detok.flush() == "<tool_"


def test_the_first_of_several_markers_splits_the_reply() -> None:
    detok = Detokenizer((), ('{"name": "a"', '{"name": "b"'))
    assert detok.feed(b'JSON: {"name": "Bob"} and {"name": ') == ('JSON: {"name": "Bob"} and ', False)
    assert detok.feed(b'"b", "parameters": {}}') == ("", False)
    assert detok.call_text == '{"name": "b", "parameters": {}}'
