"""The `command` agent: any command-line agent, run once per prompt.

    latis-unit --stdio --agent command -o preset=claude
    latis-unit --stdio --agent command -o timeout=600 -- codex exec --skip-git-repo-check
    latis-unit --stdio --agent command -o input=stdin -o mode=bytes -- ./my-agent.sh

Each prompt runs the command once, in a process group of its own: the prompt
goes in as an argument, on stdin or in a file; stdout comes back as chunks as
it is produced (a line at a time, or as the bytes arrive); stderr is drained
as it comes and its last 64 KiB are kept for the error message. Exit code 0
completes the prompt; any other ends it with `agent_error` naming the code and
the last lines of stderr. A cancelled (or timed-out) prompt ends the whole
process group: SIGTERM, then SIGKILL after `grace` seconds. When the command
exits, whatever it left running in its group is ended the same way.

Options (`-o KEY=VALUE`; docs/agent-command.md has the full story):

- `input`: `arg` (default: the prompt replaces `{prompt}` in the command's
  words, or is appended as the last argument), `stdin` (written to the
  command's stdin, then closed), or `file` (written to a temporary file whose
  path replaces `{file}`, or is appended). With `arg` and `file`, stdin is
  /dev/null.
- `mode`: `line` (default: one chunk per line, newline included) or `bytes`
  (a chunk per read, decoded as UTF-8 without splitting a character).
- `format`: `text` (default: stdout is the answer), `claude-stream-json`
  (Claude Code's JSON lines: text deltas become text chunks, tool uses
  `tool_call` chunks, the result's tokens and cost a `usage` chunk) or
  `codex-json` (`codex exec --json`: messages as text, the turn's tokens as a
  `usage` chunk; `-o preset=codex -o format=codex-json -- codex exec --json`).
- `cwd`: the working directory (default: the unit's).
- `env.NAME=VALUE`: an environment variable for the command.
- `clean_env`: `true` to start from an empty environment, keeping only the
  variables named in `pass_env` (comma-separated; default
  `PATH,HOME,LANG,LC_ALL,TMPDIR`) and the `env.*` ones.
- `grace`: seconds between SIGTERM and SIGKILL (default 3).
- `timeout`: seconds one run may take (default: none).
- `preset`: a known agent (`PRESETS`): its command line and default options.
  `-- COMMAND` and options still override.
- `continue`: for presets that can (claude), carry the conversation from one
  prompt of a session to the next (default: true where supported).

The package: `agent` holds `CommandAgent` and the run of a command (its process
group, pipes and end); `presets` the known agent CLIs (`PRESETS`) and the
placeholders a command line may hold; `claude_stream` the reader of Claude
Code's stream-json output; `codex_stream` the reader of `codex exec --json`.
"""

from latis_agents.command.agent import CommandAgent as CommandAgent
from latis_agents.command.agent import CommandFailed as CommandFailed
from latis_agents.command.presets import PRESETS as PRESETS
from latis_agents.command.presets import Preset as Preset

__all__ = ["PRESETS", "CommandAgent", "CommandFailed", "Preset"]
