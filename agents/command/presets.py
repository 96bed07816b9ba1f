"""The known agent CLIs (`-o preset=NAME`): `Preset` and `PRESETS`, and the
placeholders a command line (a preset's or one given after `--`) may hold."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

PROMPT = "{prompt}"
FILE = "{file}"
SESSION = "{session}"


@attrs.frozen
class Preset:
    """A known agent CLI: how to run it once per prompt.

    Attributes:
        command: its command line (`{prompt}` marks where the prompt goes; without
            it the prompt is the last argument).
        options: default options (any `-o` option overrides them).
        first: words added to a session's first prompt when `continue` is on
            (`{session}` is a UUID of the session's own).
        then: words added to the session's later prompts when `continue` is on.
        about: what it is, in one line.
    """

    command: tuple[str, ...]
    options: Mapping[str, str] = attrs.field(factory=dict)
    first: tuple[str, ...] = ()
    then: tuple[str, ...] = ()
    about: str = ""

    @property
    def continues(self) -> bool:
        """Whether this agent can carry a conversation across runs."""
        return bool(self.first or self.then)


#: The agents with a preset (`-o preset=NAME`). Each runs once per prompt with
#: stdin from /dev/null and the prompt as an argument.
PRESETS: Mapping[str, Preset] = {
    "claude": Preset(
        (
            "claude",
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--include-partial-messages",
        ),
        {"format": "claude-stream-json"},
        first=("--session-id", SESSION),
        then=("--resume", SESSION),
        about="Claude Code in print mode, streamed; a session is one Claude conversation",
    ),
    "codex": Preset(
        ("codex", "exec"),
        about="Codex non-interactive; each prompt is a new Codex session",
    ),
    "gemini": Preset(
        ("gemini", "-p", PROMPT),
        {"mode": "bytes"},
        about="Gemini CLI non-interactive; it streams, so chunks are bytes as they come",
    ),
    "aider": Preset(
        ("aider", "--message", PROMPT, "--yes"),
        about="aider: one message, every confirmation answered yes",
    ),
    "llm": Preset(
        ("llm", PROMPT),
        {"mode": "bytes"},
        about="Simon Willison's llm; it streams, so chunks are bytes as they come",
    ),
}
