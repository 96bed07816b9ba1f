"""The screen of `latis top` (textual): four panes, a status line and the keys.

Everything it knows comes from `_feed.Feed` as `FeedEvent`s; everything it asks
goes to the feed, which answers later. Nothing here waits for the daemon.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult, ScreenStackError
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Footer, Input, Static

from ._rows import INBOX_COLUMNS, SESSION_COLUMNS, UNIT_COLUMNS, Rows, Table, rows

if TYPE_CHECKING:
    from ._feed import Feed

__all__ = ["FeedEvent", "TopApp"]

#: The stream pane keeps this much text (characters), the latest.
KEEP = 40_000


class FeedEvent(Message):
    """Something the feed heard from cmdr (see `_feed.Sink` for the kinds)."""

    def __init__(self, kind: str, data: Any) -> None:
        super().__init__()
        self.kind = kind
        self.data = data


class Pane(DataTable[str]):
    """A table of the screen: `enter` opens its row (and says so in the footer)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "select_cursor", "open")]


class TopApp(App[None]):
    """`latis top`: units, sessions, the inbox and one session's stream."""

    TITLE = "latis top"
    #: No command palette: its key would take footer room at 80 columns.
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    Screen { layout: vertical; }
    #bar { height: 1; background: $panel; color: $text; padding: 0 1; }
    .pane { border-top: solid $primary-darken-2; border-title-color: $text-muted;
            border-title-style: bold; height: auto; }
    .pane:focus-within { border-top: solid $accent; border-title-color: $text; }
    #units { max-height: 7; }
    #inbox { max-height: 6; }
    #sessions { height: 1fr; min-height: 4; }
    #stream { height: 1fr; min-height: 4; }
    #ask { dock: bottom; height: auto; display: none; background: $boost; }
    #ask.open { display: block; }
    #ask-label { height: auto; max-height: 3; padding: 0 1; color: $text; }
    #ask-input { border: none; height: 1; padding: 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "filter"),
        Binding("enter", "open", "open"),
        Binding("a", "answer", "answer"),
        Binding("c", "cancel", "cancel"),
        Binding("n", "new", "new prompt"),
        Binding("q", "quit", "quit"),
        Binding("escape", "leave", "back"),
    ]

    def __init__(self, feed: Feed, refresh: float = 2.0) -> None:
        super().__init__()
        self.feed = feed
        self.refresh_every = refresh
        self.status: dict[str, Any] | None = None
        self.inbox: dict[str, Any] | None = None
        self.usage: dict[str, Any] | None = None
        #: Session -> state, live from the daemon's state subscription.
        self.states: dict[str, str] = {}
        self.view = Rows()
        self.filter = ""
        #: The session the stream pane follows.
        self.followed: str | None = None
        self.stream_text = Text()
        #: The last note for the user, and whether it is a problem.
        self.note = ""
        self.problem = False
        #: What the input line is for: "filter", "answer" or "prompt", and whom.
        self.mode: str | None = None
        self.target: dict[str, str] = {}

    # ---- layout ---------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static("latis top: connecting to cmdr", id="bar")
        for name, columns in (
            ("units", UNIT_COLUMNS),
            ("sessions", SESSION_COLUMNS),
            ("inbox", INBOX_COLUMNS),
        ):
            table = Pane(id=name, cursor_type="row", classes="pane")
            table.border_title = name
            for column in columns:
                table.add_column(column, key=column)
            yield table
        with VerticalScroll(id="stream", classes="pane"):
            yield Static(id="stream-text")
        with Vertical(id="ask"):
            yield Static(id="ask-label")
            yield Input(id="ask-input")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#stream").border_title = "stream (enter on a session follows it)"
        self.query_one("#sessions").focus()
        self.feed.sink = self._sink
        self.feed.start(self.refresh_every)
        self.set_interval(1.0, self._render_tables)

    def on_unmount(self) -> None:
        self.feed.sink = lambda kind, data: None

    def _sink(self, kind: str, data: Any) -> None:
        # Called in the feed's trio thread: post_message is thread-safe.
        try:
            self.post_message(FeedEvent(kind, data))
        except RuntimeError:  # the app has closed its loop
            pass

    # ---- what the feed says ---------------------------------------------------------------

    def on_feed_event(self, event: FeedEvent) -> None:
        try:
            mounted = bool(self.screen.query("#units"))
        except ScreenStackError:
            mounted = False
        if not mounted:
            # The screen is gone (the app is closing): what the feed still says
            # has nowhere to go.
            return
        kind, data = event.kind, event.data
        if kind in ("status", "inbox", "usage"):
            setattr(self, kind, data)
            if kind == "status":
                # The daemon's status is newer than what the subscription said before it.
                self.states = {}
                if self.problem:
                    self._say("")
            self._render_tables()
        elif kind == "states":
            self.states.update(data)
            self._render_tables()
        elif kind == "following":
            self._start_stream(data)
        elif kind == "stream":
            session, events = data
            if session == self.followed:
                self._add_to_stream(events)
        elif kind == "note":
            self._say(str(data))
        elif kind == "problem":
            self._say(str(data), problem=True)

    def _say(self, text: str, problem: bool = False) -> None:
        self.note, self.problem = text, problem
        self._render_bar()

    # ---- the tables -----------------------------------------------------------------------

    def _render_tables(self) -> None:
        self.view = rows(self.status, self.inbox, self.usage, self.states, time.time())
        for name, table in (
            ("units", self.view.units),
            ("sessions", self.view.sessions),
            ("inbox", self.view.inbox),
        ):
            self._sync(self.query_one(f"#{name}", DataTable), self._filtered(table))
        self._render_bar()

    def _filtered(self, table: Table) -> Table:
        if not self.filter:
            return table
        needle = self.filter.lower()
        return [
            (key, cells) for key, cells in table if any(needle in cell.lower() for cell in cells)
        ]

    @staticmethod
    def _sync(widget: DataTable[str], table: Table) -> None:
        """Show `table` in `widget`: cells updated in place, the cursor kept on its row."""
        keys = [key for key, _ in table]
        current = [row.key.value for row in widget.ordered_rows]
        if keys == current:
            columns = [column.key for column in widget.ordered_columns]
            for key, cells in table:
                old = widget.get_row(key)
                for column, before, after in zip(columns, old, cells, strict=True):
                    if before != after:
                        widget.update_cell(key, column, after)
            return
        selected = _selected(widget)
        widget.clear()
        for key, cells in table:
            widget.add_row(*cells, key=key)
        if selected in keys:
            widget.move_cursor(row=keys.index(selected), animate=False)

    def _render_bar(self) -> None:
        units, sessions, items = self.view.units, self.view.sessions, self.view.inbox
        text = Text(" ")
        if self.status is None:
            text.append("connecting to cmdr")
        else:
            busy = sum(1 for _, cells in sessions if cells[3] == "busy")
            text.append(f"{len(units)} units · {len(sessions)} sessions, {busy} busy · ")
            text.append(f"{len(items)} waiting", style="bold yellow" if items else "")
        if self.filter:
            text.append(f" · filter: {self.filter}", style="bold")
        if self.note:
            text.append(" · ")
            text.append(self.note, style="bold red" if self.problem else "italic")
        text.truncate(max(self.size.width - 2, 20), overflow="ellipsis")
        self.query_one("#bar", Static).update(text)

    # ---- the stream pane --------------------------------------------------------------------

    def _start_stream(self, session: str) -> None:
        self.followed = session
        unit = self.view.session_info.get(session, {}).get("unit", "?")
        self.query_one("#stream").border_title = f"stream · {session} on {unit}"
        self.stream_text = Text()
        self._show_stream()

    def _add_to_stream(self, events: list[tuple[Any, ...]]) -> None:
        text = self.stream_text
        for event in events:
            if event[0] == "text":
                text.append(event[1])
            elif event[0] == "ask":
                options = f" [{', '.join(event[2])}]" if event[2] else ""
                text.append(f"\n? {event[1]}{options}  (a: answer)\n", style="bold yellow")
            elif event[0] == "start":
                if text.plain:
                    text.append(f"\n── prompt {event[1]} ──\n", style="dim")
            elif event[0] == "end":
                text.append(f"\n[{event[1] or 'ended'}]\n", style="dim")
        if len(text) > KEEP:
            self.stream_text = text[len(text) - KEEP :]
        self._show_stream()

    def _show_stream(self) -> None:
        pane = self.query_one("#stream", VerticalScroll)
        at_end = pane.scroll_y >= pane.max_scroll_y
        self.query_one("#stream-text", Static).update(self.stream_text)
        if at_end:
            pane.scroll_end(animate=False)

    # ---- what is selected -------------------------------------------------------------------

    def _focused_pane(self) -> str | None:
        widget = self.focused
        while widget is not None:
            if widget.id in ("units", "sessions", "inbox", "stream"):
                return widget.id
            widget = widget.parent  # type: ignore[assignment]
        return None

    def _session(self) -> str | None:
        """The session the keys act on: the selected row's, else the one followed."""
        pane = self._focused_pane()
        if pane == "sessions":
            return _selected(self.query_one("#sessions", DataTable))
        if pane == "inbox":
            item = self.view.items.get(_selected(self.query_one("#inbox", DataTable)) or "")
            return str(item["session"]) if item else None
        return self.followed

    # ---- keys --------------------------------------------------------------------------------

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def action_open(self) -> None:
        pane = self._focused_pane()
        if pane == "units":
            unit = _selected(self.query_one("#units", DataTable))
            if unit is not None:
                self.filter = unit
                self._render_tables()
                self.query_one("#sessions").focus()
        elif pane == "inbox":
            self.action_answer()
        else:
            session = self._session()
            if session is not None:
                self.followed = session
                self.feed.follow(session)

    def action_filter(self) -> None:
        self._ask(
            "filter",
            "filter: rows with this text, in any column (enter: keep, esc: clear)",
            value=self.filter,
        )

    def action_answer(self) -> None:
        item_id = None
        if self._focused_pane() == "inbox":
            item_id = _selected(self.query_one("#inbox", DataTable))
        else:
            session = self._session()
            if session is not None:
                item_id = self.view.session_info.get(session, {}).get("question")
        item = self.view.items.get(item_id or "")
        if item is None and self.view.items and self._focused_pane() != "inbox":
            # Nothing selected waits: the oldest question does (the label says whose).
            item = next(iter(self.view.items.values()))
        if item is None:
            self._say("nothing waits for an answer", problem=True)
            return
        options = f" [{', '.join(item['options'])}]" if item.get("options") else ""
        self._ask(
            "answer",
            f"answer {item['id']} ({item['unit']}/{item['session']}): {item['question']}{options}",
            id=item["id"],
        )

    def action_cancel(self) -> None:
        session = self._session()
        if session is None:
            self._say("select a session to cancel its prompt", problem=True)
            return
        self.feed.cancel(session)
        self._say(f"cancelling the prompt of session {session}")

    def action_new(self) -> None:
        if self._focused_pane() == "units":
            unit = _selected(self.query_one("#units", DataTable)) or "local"
            self._ask("prompt", f"a prompt to a new session on unit {unit}", unit=unit)
            return
        session = self._session()
        if session is None:
            self._ask("prompt", "a prompt to a new session on unit local", unit="local")
            return
        unit = self.view.session_info.get(session, {}).get("unit", "?")
        self._ask("prompt", f"a prompt to session {session} on unit {unit}", session=session)

    def action_leave(self) -> None:
        if self.mode is not None:
            self._close_ask(cancelled=True)
        elif self.filter:
            self.filter = ""
            self._render_tables()

    def _ask(self, mode: str, label: str, value: str = "", **target: str) -> None:
        self.mode, self.target = mode, target
        self._before = self.focused
        self.query_one("#ask-label", Static).update(Text(label))
        field = self.query_one("#ask-input", Input)
        field.value = value
        self.query_one("#ask").add_class("open")
        field.focus()

    def _close_ask(self, cancelled: bool) -> None:
        if cancelled and self.mode == "filter":
            self.filter = ""
            self._render_tables()
        self.mode = None
        self.query_one("#ask").remove_class("open")
        before = getattr(self, "_before", None)
        (
            before if before is not None and before.is_attached else self.query_one("#sessions")
        ).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if self.mode == "filter":
            self.filter = event.value.strip()
            self._render_tables()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        mode, target = self.mode, self.target
        self._close_ask(cancelled=False)
        if mode == "answer" and text:
            self.feed.answer(target["id"], text)
            self._say(f"answering {target['id']}")
        elif mode == "prompt" and text:
            if "session" in target:
                self.followed = target["session"]
                self.feed.follow(target["session"], text)
            else:
                self.followed = None
                self.feed.new_session(target["unit"], text)


def _selected(table: DataTable[str]) -> str | None:
    """The key of the row under the cursor, or None."""
    if table.row_count == 0:
        return None
    row = min(max(table.cursor_row, 0), table.row_count - 1)
    key = table.ordered_rows[row].key.value
    return None if key is None else str(key)
